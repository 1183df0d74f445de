"""WukongModel: image tower + Chinese text tower, per-token projection, global or token-wise head.

Reads top to bottom: outputs, building blocks (token reduction), the PreTrainedModel base, the
model. Image tokens flow: tower -> (ln_post for CLIP towers) -> per-token projection ->
(optional token reduction) -> L2 normalisation. Text tokens: tower -> per-token projection ->
L2 normalisation. Global features are the pooled token ([CLS], mean, tower pooling or the
[SEP]/eos position) projected and normalised.
"""


import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_wukong import WukongConfig
from .losses import contrastive_loss
from .similarity import token_wise_similarity

__all__ = [
    "WukongModel",
    "WukongPreTrainedModel",
    "WukongOutput",
    "WukongImageFeatures",
    "WukongTextFeatures",
    "WukongTokenReduction",
]


@dataclass
class WukongImageFeatures(ModelOutput):
    """Cached image features: everything `WukongModel.score` needs.

    embeds: (B, D) normalised global embeddings. token_embeds: (B, N, D) normalised token
    embeddings (after token reduction). token_mask: (B, N) bool, True where a token counts in
    token-wise scoring.
    """

    embeds: torch.Tensor | None = None
    token_embeds: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None
    vision_model_output: Any = None


@dataclass
class WukongTextFeatures(ModelOutput):
    """Cached text features: embeds (B, D), token_embeds (B, L, D), token_mask (B, L) bool."""

    embeds: torch.Tensor | None = None
    token_embeds: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None
    text_model_output: Any = None


@dataclass
class WukongOutput(ModelOutput):
    """Output of `WukongModel.forward`.

    logits_per_image: (I, T) scaled image-to-text scores. logits_per_text: (T, I) scaled
    text-to-image scores; for token-wise similarity this is its own direction, not a transpose.
    loss: symmetric InfoNCE, when `return_loss=True`.
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_token_embeds: torch.Tensor | None = None
    image_token_embeds: torch.Tensor | None = None
    text_token_mask: torch.Tensor | None = None
    image_token_mask: torch.Tensor | None = None
    text_model_output: Any = None
    vision_model_output: Any = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(
            self[k] if k not in ("text_model_output", "vision_model_output") else getattr(self, k).to_tuple()
            for k in self.keys()
        )


class _FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (as in the released code)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class WukongTokenReduction(nn.Module):
    """Learned token reduction of the released "Wukong" checkpoints.

    (B, H, W, C) projected patch tokens -> (B, K, C): K spatial attention maps from grouped 1x1
    convolutions over layer-normalised tokens, softmax over space, weighted sum of grouped-1x1
    transformed tokens.
    """

    def __init__(self, channels: int, num_tokens: int, groups: int):
        super().__init__()
        self.norm = _FP32LayerNorm(channels)
        self.attention_maps = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=1, groups=groups, bias=False),
            nn.Conv2d(channels, num_tokens, kernel_size=1, bias=False),
        )
        self.feat_conv = nn.Conv2d(channels, channels, kernel_size=1, groups=groups, bias=False)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, H, W, C) -> (reduced (B, K, C), attention weights (B, K, H*W))."""
        batch = tokens.shape[0]
        maps = self.attention_maps(self.norm(tokens).permute(0, 3, 1, 2))  # (B, K, H, W)
        weights = maps.flatten(2).softmax(dim=-1)  # (B, K, HW)
        feats = self.feat_conv(tokens.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)  # (B, HW, C)
        return torch.bmm(weights, feats.reshape(batch, -1, feats.shape[-1])), weights


class WukongPreTrainedModel(PreTrainedModel):
    config: WukongConfig
    base_model_prefix = "wukong"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, WukongModel):
            init.normal_(module.visual_projection.weight, std=module.vision_embed_dim**-0.5)
            init.normal_(module.text_projection.weight, std=module.text_embed_dim**-0.5)
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
        elif isinstance(module, WukongTokenReduction):
            for conv in (*module.attention_maps, module.feat_conv):
                init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            init.ones_(module.norm.weight)
            init.zeros_(module.norm.bias)


class WukongModel(WukongPreTrainedModel):
    """Wukong dual encoder with the global ([CLS]) or token-wise (FILIP) similarity head."""

    def __init__(self, config: WukongConfig):
        super().__init__(config)
        self.vision_model = AutoModel.from_config(config.vision_config)
        if config.text_config.model_type == "bert":
            from transformers import BertModel

            self.text_model = BertModel._from_config(config.text_config, add_pooling_layer=False)
        else:
            self.text_model = AutoModel.from_config(config.text_config)
        if config.vision_config.model_type == "timm_wrapper":
            self.vision_embed_dim = self.vision_model.timm_model.num_features
        else:
            self.vision_embed_dim = config.vision_config.hidden_size
        self.text_embed_dim = config.text_config.hidden_size
        self.visual_projection = nn.Linear(self.vision_embed_dim, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, config.projection_dim, bias=False)
        self.token_reduction = (
            WukongTokenReduction(config.projection_dim, config.num_reduced_tokens, config.token_reduction_groups)
            if config.num_reduced_tokens
            else None
        )
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()
        self._freeze_as_configured()

    def _freeze_as_configured(self) -> None:
        """Apply the config's frozen parts: the LiT lock and the zero text positions."""
        if self.config.lock_image_tower:
            self.lock_image_tower()
        if not self.config.text_position_embeddings:
            self.hold_text_positions_at_zero()

    # ----- LiT -----------------------------------------------------------------------------
    def lock_image_tower(self, lock: bool = True) -> "WukongModel":
        """Freeze (or unfreeze) the image tower: no gradients, eval mode, run under no_grad.

        The projections, the token reduction and the temperature stay trainable (LiT).
        """
        self.config.lock_image_tower = lock
        for param in self.vision_model.parameters():
            param.requires_grad_(not lock)
        self.vision_model.train(self.training and not lock)
        return self

    def hold_text_positions_at_zero(self) -> "WukongModel":
        """Zero and freeze the BERT text tower's position embeddings (config.text_position_embeddings=False).

        With them, every caption's k-th token shares a component, and a patch that tells no captions
        apart (a plain background) can match "the k-th label token" at no cost to the contrastive loss.
        """
        weight = self.text_model.embeddings.position_embeddings.weight
        with torch.no_grad():
            weight.zero_()
        weight.requires_grad_(False)
        return self

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        # Loading replaces parameters (requires_grad back to True): re-apply what the config freezes.
        if isinstance(model, WukongModel):
            model._freeze_as_configured()
        return model

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.lock_image_tower:
            self.vision_model.eval()
        return self

    # ----- input checks --------------------------------------------------------------------
    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        size = self.config.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3 or tuple(pixel_values.shape[2:]) != (size, size):
            raise ValueError(
                f"pixel_values must have shape (batch, 3, {size}, {size}) for this model, got "
                f"{tuple(pixel_values.shape)}. Prepare images with WukongProcessor (RGB, resized and cropped to "
                f"{size}x{size})."
            )

    def _check_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}.")
        max_len = self.config.max_text_length
        if input_ids.shape[1] > max_len:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} tokens but the text tower takes at most {max_len}; tokenize "
                "with truncation=True and max_length set (WukongProcessor does this)."
            )
        vocab = self.config.text_config.vocab_size
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab):
            raise ValueError(
                f"input_ids holds ids outside the vocabulary [0, {vocab}): min {int(input_ids.min())}, max "
                f"{int(input_ids.max())}. Use this model's tokenizer."
            )
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids shape "
                f"{tuple(input_ids.shape)}."
            )

    # ----- towers --------------------------------------------------------------------------
    def _image_tokens(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, tuple, Any]:
        """Tower tokens (B, N, C), pooled feature (B, C), number of prefix tokens, patch grid, raw output."""
        if self.config.vision_config.model_type == "clip_vision_model":
            out = self.vision_model(pixel_values=pixel_values)
            # The released towers apply ln_post to every token, not only [CLS].
            tokens = self.vision_model.post_layernorm(out.last_hidden_state)
            num_prefix, pooled_by_tower = 1, None
        else:
            out = self.vision_model(pixel_values=pixel_values, do_pooling=self.config.image_pooling == "tower")
            tokens = out.last_hidden_state
            pooled_by_tower = out.pooler_output
            num_prefix = getattr(self.vision_model.timm_model, "num_prefix_tokens", 0)
            if tokens.ndim == 4:
                if getattr(self.vision_model.timm_model, "output_fmt", "NCHW") != "NHWC":
                    tokens = tokens.permute(0, 2, 3, 1)
                tokens = tokens.flatten(1, 2)
                num_prefix = 0
        num_patches = tokens.shape[1] - num_prefix
        side = int(round(num_patches**0.5))
        grid = (side, side) if side * side == num_patches else (1, num_patches)
        pooling = self.config.image_pooling
        if pooling == "cls":
            if num_prefix == 0:
                raise ValueError("image_pooling='cls' needs a tower with a [CLS] token; use 'mean' or 'tower'.")
            pooled = tokens[:, 0]
        elif pooling == "mean":
            pooled = tokens[:, num_prefix:].mean(dim=1)
        else:
            if pooled_by_tower is None:
                raise ValueError("image_pooling='tower' needs a timm tower with its own pooling head.")
            pooled = pooled_by_tower
        return tokens, pooled, num_prefix, grid, out

    def encode_image(self, pixel_values: torch.Tensor) -> WukongImageFeatures:
        """pixel_values (B, 3, S, S) -> WukongImageFeatures (normalised global and token embeddings)."""
        self._check_pixel_values(pixel_values)
        locked = self.config.lock_image_tower
        with torch.no_grad() if locked else contextlib.nullcontext():
            tokens, pooled, num_prefix, grid, out = self._image_tokens(pixel_values)
        token_embeds = self.visual_projection(tokens)
        if self.token_reduction is not None:
            patches = token_embeds[:, num_prefix:].reshape(token_embeds.shape[0], *grid, -1)
            reduced, _ = self.token_reduction(patches)
            token_embeds = torch.cat([token_embeds[:, :num_prefix], reduced], dim=1)
        token_mask = torch.ones(token_embeds.shape[:2], dtype=torch.bool, device=token_embeds.device)
        if not self.config.token_wise_image_cls:
            token_mask[:, :num_prefix] = False
        return WukongImageFeatures(
            embeds=F.normalize(self.visual_projection(pooled), dim=-1),
            token_embeds=F.normalize(token_embeds, dim=-1),
            token_mask=token_mask,
            vision_model_output=out,
        )

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> WukongTextFeatures:
        """input_ids, attention_mask (B, L) -> WukongTextFeatures. Padding never changes a score."""
        self._check_text(input_ids, attention_mask)
        if attention_mask is None:
            attention_mask = (input_ids != self.config.text_config.pad_token_id).long()
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state
        lengths = attention_mask.sum(dim=-1).clamp(min=1)
        if self.config.text_pooling == "cls":
            pooled = hidden[:, 0]
        else:  # eos: the last non-padding token, i.e. [SEP]
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
        token_mask = attention_mask.bool().clone()
        if not self.config.token_wise_text_cls:
            token_mask[:, 0] = False
        if not self.config.token_wise_text_sep:
            token_mask[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1] = False
        return WukongTextFeatures(
            embeds=F.normalize(self.text_projection(pooled), dim=-1),
            token_embeds=F.normalize(self.text_projection(hidden), dim=-1),
            token_mask=token_mask,
            text_model_output=out,
        )

    @property
    def temperature_scale(self) -> torch.Tensor:
        """exp(logit_scale) clamped at config.logit_scale_max."""
        return self.logit_scale.exp().clamp(max=self.config.logit_scale_max)

    def score(
        self, image_features: WukongImageFeatures, text_features: WukongTextFeatures
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled (logits_per_image (I, T), logits_per_text (T, I)) from cached features."""
        scale = self.temperature_scale
        if self.config.similarity == "global":
            logits_per_text = scale * text_features.embeds @ image_features.embeds.t()
            return logits_per_text.t(), logits_per_text
        image_to_text, text_to_image = token_wise_similarity(
            image_features.token_embeds,
            text_features.token_embeds,
            image_mask=image_features.token_mask,
            text_mask=text_features.token_mask,
        )
        return scale * image_to_text, scale * text_to_image

    # ----- transformers-style feature getters ---------------------------------------------
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """pooler_output: (B, D) normalised global embeddings; last_hidden_state: (B, N, D) token embeddings."""
        feats = self.encode_image(pixel_values)
        return BaseModelOutputWithPooling(last_hidden_state=feats.token_embeds, pooler_output=feats.embeds)

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        """pooler_output: (B, D) normalised global embeddings; last_hidden_state: (B, L, D) token embeddings."""
        feats = self.encode_text(input_ids, attention_mask)
        return BaseModelOutputWithPooling(last_hidden_state=feats.token_embeds, pooler_output=feats.embeds)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        **kwargs,
    ) -> WukongOutput:
        r"""
        Args:
            input_ids: (T, L) token ids from WukongProcessor. attention_mask: (T, L).
            pixel_values: (I, 3, S, S) processed images.
            return_loss: compute the paper's symmetric InfoNCE loss (needs I == T).

        Returns:
            WukongOutput with logits_per_image (I, T) and logits_per_text (T, I).
        """
        if input_ids is None or pixel_values is None:
            raise ValueError("WukongModel.forward needs both input_ids and pixel_values; use encode_text/encode_image "
                             "for one modality.")
        image = self.encode_image(pixel_values)
        text = self.encode_text(input_ids, attention_mask)
        if return_loss and pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"return_loss needs one text per image: got {pixel_values.shape[0]} images and "
                f"{input_ids.shape[0]} texts."
            )
        logits_per_image, logits_per_text = self.score(image, text)
        loss = contrastive_loss(logits_per_image, logits_per_text) if return_loss else None
        return WukongOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text.embeds,
            image_embeds=image.embeds,
            text_token_embeds=text.token_embeds,
            image_token_embeds=image.token_embeds,
            text_token_mask=text.token_mask,
            image_token_mask=image.token_mask,
            text_model_output=text.text_model_output,
            vision_model_output=image.vision_model_output,
        )
