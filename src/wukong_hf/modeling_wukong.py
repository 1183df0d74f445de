"""WukongModel: image tower + Chinese text tower, per-token projection, global or token-wise head.

Reads top to bottom: outputs, building blocks (token reduction), the PreTrainedModel base, the
model. Image tokens flow: tower -> (ln_post for CLIP towers) -> per-token projection ->
(optional token reduction) -> L2 normalisation. Text tokens: tower -> per-token projection ->
L2 normalisation. Global features are the pooled token ([CLS], mean, tower pooling or the
[SEP]/eos position) projected and normalised.
"""


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
from .features import WukongImageFeatures, WukongTextFeatures
from .losses import contrastive_loss
from .similarity import SimilarityRule
from .text_feature_memo import TextFeatureMemo, copy_features, copy_output

__all__ = [
    "WukongModel",
    "WukongPreTrainedModel",
    "WukongOutput",
    "WukongImageTowerOutput",
    "WukongImageFeatures",
    "WukongTextFeatures",
    "WukongTokenReduction",
]


@dataclass
class WukongImageTowerOutput:
    """What the image tower gives the image head (`WukongModel.image_tower` -> `image_head`).

    tokens: (B, N, C) tower tokens ([CLS] first where the tower has one; ln_post applied for CLIP
    towers). pooled: (B, C) the tower feature the global head projects. num_prefix_tokens: tokens
    before the patches. grid: (H, W) of the patches. tower_output: the tower's own output (hidden
    states and attentions when asked for).
    """

    tokens: torch.Tensor
    pooled: torch.Tensor
    num_prefix_tokens: int = 0
    grid: tuple[int, int] | None = None
    tower_output: Any = None


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
    """LayerNorm computed in at least float32 whatever the input dtype (as in the released code)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compute = torch.promote_types(x.dtype, torch.float32)
        return F.layer_norm(x.to(compute), self.normalized_shape, self.weight.to(compute), self.bias.to(compute),
                            self.eps).to(x.dtype)


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


class _ZeroPositionTable(nn.Module):
    """A position table that is zero everywhere: a constant buffer, not a parameter, so it is never
    trained and needs no freezing (config.text_position_embeddings=False)."""

    def __init__(self, num_positions: int, dim: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_positions, dim))

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.weight[position_ids]


class WukongModel(WukongPreTrainedModel):
    """Wukong dual encoder with the global ([CLS]) or token-wise (FILIP) similarity head.

    Images: `image_tower` (the timm / CLIP tower: tokens and the pooled feature) then `image_head`
    (per-token projection, optional token reduction, normalisation, which tokens count);
    `encode_image` is the two in a row. Texts: `encode_text`. Scores: `score`, through the
    config's `SimilarityRule` (the one place a similarity kind is decided).
    """

    def __init__(self, config: WukongConfig):
        super().__init__(config)
        self.vision_model = AutoModel.from_config(config.vision_config)
        if config.text_config.model_type == "bert":
            from transformers import BertModel

            self.text_model = BertModel._from_config(config.text_config, add_pooling_layer=False)
            if not config.text_position_embeddings:
                table = self.text_model.embeddings.position_embeddings
                self.text_model.embeddings.position_embeddings = _ZeroPositionTable(*table.weight.shape)
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
        # Inference-only memo of forward's text features (the pipeline re-sends the same labels for every
        # image); `model.text_feature_memo.enabled = False` turns it off. Not a config field: it changes no result.
        self.text_feature_memo = TextFeatureMemo()
        self.post_init()

    def train(self, mode: bool = True):
        """nn.Module.train; also empties the text feature memo (eval() comes through here too)."""
        memo = getattr(self, "text_feature_memo", None)
        if memo is not None:
            memo.clear()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        # .to() / .half() / .cuda() come through here: the memo's features are for the old dtype/device.
        memo = getattr(self, "text_feature_memo", None)
        if memo is not None:
            memo.clear()
        return super()._apply(fn, *args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save_pretrained; a folder saved with remote code also answers to the pipeline's class.

        register_for_auto_class records one Auto class per model (AutoModel); the zero-shot pipeline
        asks for AutoModelForZeroShotImageClassification, so config.json's auto_map names it too.
        """
        if type(self)._auto_class is not None:
            target = f"{type(self).__module__.rsplit('.', 1)[-1]}.{type(self).__name__}"
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}),
                                    "AutoModelForZeroShotImageClassification": target}
        return super().save_pretrained(save_directory, *args, **kwargs)

    @property
    def similarity_rule(self) -> SimilarityRule:
        """How this model scores features (config.similarity and config.token_wise_padding)."""
        return SimilarityRule.from_config(self.config)

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

    # ----- images: tower, then head ----------------------------------------------------------
    def image_tower(self, pixel_values: torch.Tensor, **tower_kwargs) -> WukongImageTowerOutput:
        """pixel_values (B, 3, S, S) -> the tower's tokens and pooled feature (no projection yet).

        tower_kwargs: output_hidden_states / output_attentions, passed to the tower.
        """
        self._check_pixel_values(pixel_values)
        tower_kwargs = {k: v for k, v in tower_kwargs.items() if v is not None}
        if self.config.vision_config.model_type == "clip_vision_model":
            out = self.vision_model(pixel_values=pixel_values, **tower_kwargs)
            # The released towers apply ln_post to every token, not only [CLS].
            tokens = self.vision_model.post_layernorm(out.last_hidden_state)
            num_prefix, pooled_by_tower = 1, None
        else:
            if tower_kwargs.get("output_attentions"):
                raise ValueError(
                    "output_attentions is not available for timm image towers (transformers' TimmWrapperModel "
                    "does not return attention maps); ask for output_hidden_states instead."
                )
            out = self.vision_model(pixel_values=pixel_values, do_pooling=self.config.image_pooling == "tower",
                                    **tower_kwargs)
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
        return WukongImageTowerOutput(tokens=tokens, pooled=pooled, num_prefix_tokens=num_prefix, grid=grid,
                                      tower_output=out)

    def image_head(self, tower: WukongImageTowerOutput) -> WukongImageFeatures:
        """Tower output -> WukongImageFeatures: per-token projection, token reduction, normalisation."""
        num_prefix = tower.num_prefix_tokens
        token_embeds = self.visual_projection(tower.tokens)
        grid = tower.grid
        if self.token_reduction is not None:
            patches = token_embeds[:, num_prefix:].reshape(token_embeds.shape[0], *tower.grid, -1)
            reduced, _ = self.token_reduction(patches)
            token_embeds = torch.cat([token_embeds[:, :num_prefix], reduced], dim=1)
            grid = None  # learned tokens have no place in the image
        token_mask = torch.ones(token_embeds.shape[:2], dtype=torch.bool, device=token_embeds.device)
        if not self.config.token_wise_image_cls:
            token_mask[:, :num_prefix] = False
        return WukongImageFeatures(
            embeds=F.normalize(self.visual_projection(tower.pooled), dim=-1),
            token_embeds=F.normalize(token_embeds, dim=-1),
            token_mask=token_mask,
            grid=grid,
            num_prefix_tokens=num_prefix,
        )

    def encode_image(self, pixel_values: torch.Tensor) -> WukongImageFeatures:
        """pixel_values (B, 3, S, S) -> WukongImageFeatures: `image_head(image_tower(pixel_values))`."""
        return self.image_head(self.image_tower(pixel_values))

    # ----- texts -------------------------------------------------------------------------------
    def _text_tower(self, input_ids, attention_mask, **tower_kwargs) -> tuple[Any, torch.Tensor]:
        self._check_text(input_ids, attention_mask)
        if attention_mask is None:
            attention_mask = (input_ids != self.config.text_config.pad_token_id).long()
        tower_kwargs = {k: v for k, v in tower_kwargs.items() if v is not None}
        return self.text_model(input_ids=input_ids, attention_mask=attention_mask, **tower_kwargs), attention_mask

    def _text_head(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> WukongTextFeatures:
        lengths = attention_mask.sum(dim=-1).clamp(min=1)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        if self.config.text_pooling == "cls":
            pooled = hidden[:, 0]
        else:  # eos: the last non-padding token, i.e. [SEP]
            pooled = hidden[rows, lengths - 1]
        token_mask = attention_mask.bool().clone()
        if not self.config.token_wise_text_cls:
            token_mask[:, 0] = False
        if not self.config.token_wise_text_sep:
            token_mask[rows, lengths - 1] = False
        return WukongTextFeatures(
            embeds=F.normalize(self.text_projection(pooled), dim=-1),
            token_embeds=F.normalize(self.text_projection(hidden), dim=-1),
            token_mask=token_mask,
            has_padding=attention_mask.sum(dim=-1) < self.config.max_text_length,
        )

    def _text_output_and_features(self, input_ids, attention_mask, **tower_kwargs) -> tuple[Any, WukongTextFeatures]:
        """(text tower output, WukongTextFeatures): `_text_tower` then `_text_head`."""
        out, attention_mask = self._text_tower(input_ids, attention_mask, **tower_kwargs)
        return out, self._text_head(out.last_hidden_state, attention_mask)

    def _memo_text(self, input_ids, attention_mask, **tower_kwargs) -> tuple[Any, WukongTextFeatures]:
        """`_text_output_and_features`, served from `text_feature_memo` when the call allows it (see
        wukong_hf.text_feature_memo); a hit returns copies of the stored tensors."""
        memo = self.text_feature_memo
        asks_internals = any(tower_kwargs.get(k) for k in ("output_hidden_states", "output_attentions")) or any(
            getattr(self.text_model.config, k, False) for k in ("output_hidden_states", "output_attentions"))
        modules = [*self.text_model.modules(), self.text_projection]
        fingerprinted = None
        if memo.enabled and not asks_internals and memo.usable(self, modules):
            self._check_text(input_ids, attention_mask)
            config = self.config
            settings = (config.text_pooling, config.token_wise_text_cls, config.token_wise_text_sep,
                        config.max_text_length, config.text_config.pad_token_id,
                        getattr(self.text_model.config, "_attn_implementation", None))
            fingerprinted = memo.fingerprint(modules, settings)
        if fingerprinted is None:
            return self._text_output_and_features(input_ids, attention_mask, **tower_kwargs)
        key = memo.batch_key(input_ids, attention_mask)
        found = memo.lookup(*fingerprinted, key)
        if found is None:
            out, features = self._text_output_and_features(input_ids, attention_mask, **tower_kwargs)
            memo.store(key, copy_output(out), copy_features(features))
            return out, features
        out, features, _ = found
        return copy_output(out), copy_features(features)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> WukongTextFeatures:
        """input_ids, attention_mask (B, L) -> WukongTextFeatures. Padding never changes a score."""
        return self._text_output_and_features(input_ids, attention_mask)[1]

    # ----- scores ------------------------------------------------------------------------------
    @property
    def inverse_temperature(self) -> torch.Tensor:
        """The logits' multiplier 1/temperature = exp(logit_scale), clamped at config.logit_scale_max."""
        return self.logit_scale.exp().clamp(max=self.config.logit_scale_max)

    def similarity(
        self, image_features: WukongImageFeatures, text_features: WukongTextFeatures
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled (image_to_text (I, T), text_to_image (T, I)) by this model's SimilarityRule."""
        return self.similarity_rule.scores(image_features, text_features)

    def score(
        self, image_features: WukongImageFeatures, text_features: WukongTextFeatures
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (logits_per_image (I, T), logits_per_text (T, I)): `similarity` times inverse_temperature."""
        image_to_text, text_to_image = self.similarity(image_features, text_features)
        scale = self.inverse_temperature
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
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> WukongOutput:
        r"""
        Args:
            input_ids: (T, L) token ids from WukongProcessor. attention_mask: (T, L).
            pixel_values: (I, 3, S, S) processed images.
            return_loss: compute the paper's symmetric InfoNCE loss (needs I == T).
            output_hidden_states, output_attentions: ask both towers for them; they come back in
                `vision_model_output` and `text_model_output` (timm towers give hidden states only).

        Returns:
            WukongOutput with logits_per_image (I, T) and logits_per_text (T, I).
        """
        if input_ids is None or pixel_values is None:
            raise ValueError("WukongModel.forward needs both input_ids and pixel_values; use encode_text/encode_image "
                             "for one modality.")
        if return_loss and pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"return_loss needs one text per image: got {pixel_values.shape[0]} images and "
                f"{input_ids.shape[0]} texts."
            )
        asked = {"output_hidden_states": output_hidden_states, "output_attentions": output_attentions}
        tower = self.image_tower(pixel_values, **asked)
        image = self.image_head(tower)
        # The text side goes through the memo: the zero-shot pipeline sends the same labels with every image.
        text_out, text = self._memo_text(input_ids, attention_mask, **asked)
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
            text_model_output=text_out,
            vision_model_output=tower.tower_output,
        )
