"""WukongConfig: a dual-encoder (image tower + Chinese text tower) with global or token-wise heads.

The config is pure typed data. Two sub-configs describe the towers:

* ``vision_config``: a timm architecture through transformers' ``TimmWrapperConfig``
  (``model_type="timm_wrapper"``) or a transformers ``CLIPVisionConfig``
  (``model_type="clip_vision_model"``).
* ``text_config``: a ``BertConfig`` (the paper; pooled at [CLS]) or a ``CLIPTextConfig``
  (the released checkpoints: a causal transformer pooled at the [SEP] position).

The remaining fields choose the head: ``similarity`` ("global" or "token_wise"), the joint
``projection_dim``, the learnable temperature, the optional token reduction of the released
"Wukong" checkpoints, which tokens take part in token-wise scoring, and the two scoring rules in
which the released evaluation code differs from the paper (``token_wise_padding``,
``zero_shot_ensemble``; ``SCORING_RULES`` names both sets).

The config describes the architecture and how it scores, nothing about training: whether the
image tower is locked (LiT) is decided by the training run (``wukong_hf.training``). A
config.json written by an older version with a ``lock_image_tower`` key still loads (the key is
dropped).
"""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .similarity import SIMILARITY_KINDS as SIMILARITIES
from .similarity import TOKEN_WISE_PADDING

__all__ = ["WukongConfig", "VISION_TOWER_TYPES", "TEXT_TOWER_TYPES", "SIMILARITIES", "SCORING_RULES", "ZERO_SHOT_ENSEMBLES"]

VISION_TOWER_TYPES = ("timm_wrapper", "clip_vision_model")
TEXT_TOWER_TYPES = ("bert", "clip_text_model")
IMAGE_POOLINGS = ("cls", "mean", "tower")
TEXT_POOLINGS = ("cls", "eos")
ZERO_SHOT_ENSEMBLES = ("embedding", "similarity", "probability")

# The two ways to score that a config can follow. "paper": the paper's formulas (section 3.3 and
# the ensembles of section 4.2). "official": what the released evaluation code computes
# (docs/wukong-facts.md): padded text positions offer a token-wise similarity of 0, and token-wise
# prompt ensembles average the softmax over classes of the unscaled similarity.
SCORING_RULES = {
    "paper": {"token_wise_padding": "ignore", "zero_shot_ensemble": None},
    "official": {"token_wise_padding": "zero", "zero_shot_ensemble": "official"},
}

# BERT-Chinese WordPiece ids (docs/wukong-facts.md): [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102.
CHINESE_VOCAB_SIZE = 21128
PAD_ID, CLS_ID, SEP_ID = 0, 101, 102

_DEFAULT_VISION = {
    "architecture": "vit_base_patch32_clip_quickgelu_224",
    "do_pooling": False,
    "model_args": {"img_size": 224},
}
_DEFAULT_TEXT = {
    "vocab_size": CHINESE_VOCAB_SIZE,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 32,
    "pad_token_id": PAD_ID,
}


@strict
class WukongConfig(PreTrainedConfig):
    r"""
    Configuration of a [`WukongModel`].

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Image tower: `TimmWrapperConfig` (`model_type="timm_wrapper"`) or `CLIPVisionConfig`
            (`model_type="clip_vision_model"`). Defaults to the OpenAI-CLIP ViT-B/32 layout in timm.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Text tower: `BertConfig` (`model_type="bert"`) or `CLIPTextConfig`
            (`model_type="clip_text_model"`) over the 21,128-entry BERT-Chinese vocabulary.
        projection_dim (`int`, defaults to 256): size of the joint embedding space.
        similarity (`str`, defaults to `"token_wise"`): `"global"` ([CLS]/pooled features) or
            `"token_wise"` (FILIP late interaction).
        logit_scale_init_value (`float`): initial log temperature scale, log(1/0.07).
        logit_scale_max (`float`, defaults to 100): the scale is clamped at this value.
        image_size (`int`, defaults to 224): square input size the image tower expects.
        image_pooling (`str`): global image feature: `"cls"` (ViT), `"mean"` (Swin: average of the
            patch tokens) or `"tower"` (the tower's own pooling, e.g. CLIP ResNet attention pool).
        text_pooling (`str`): global text feature: `"cls"` (paper, BERT) or `"eos"` (released
            checkpoints: the last non-padding token, i.e. [SEP]).
        num_reduced_tokens (`int`, *optional*): when set, patch tokens are reduced to this many
            learned tokens after projection (the released "Wukong" checkpoints: 24 ViT-L, 12 ViT-B/Swin).
        token_reduction_groups (`int`, defaults to 8): groups of the reduction's 1x1 convolutions.
        token_wise_image_cls (`bool`): whether the image [CLS] token takes part in token-wise scoring.
        token_wise_text_cls (`bool`): whether the text [CLS] token takes part (paper: no; released: yes).
        token_wise_text_sep (`bool`): whether the text [SEP] token takes part (paper and released: yes).
        token_wise_padding (`str`, defaults to `"ignore"`): token-wise image-to-text scoring of padded
            text positions. `"ignore"` (paper): they never take part. `"zero"` (released evaluation
            code): each text is laid out at the tower's full length (32) with zero vectors for padding,
            so every image token's max also sees a 0 and never falls below it.
        zero_shot_ensemble (`str`, *optional*): how zero-shot classification combines prompt templates.
            `"embedding"`: mean of each class's normalised global text embeddings (global models only);
            `"similarity"`: mean over templates of the similarity; `"probability"`: mean over templates
            of the softmax over classes of the unscaled similarity (the released token-wise code).
            None: the paper's choice for the head (`"embedding"` global, `"similarity"` token-wise).
            `"official"` is accepted as input and stored as the released code's choice for the head
            (`"embedding"` global, `"probability"` token-wise).
        text_position_embeddings (`bool`, defaults to True): False builds a BERT text tower without
            absolute positions (its position table is a constant zero buffer, never trained), so a
            token's output says nothing about where it stands: a bag of characters with attention. The
            demo uses it (docs/demo.md).
    """

    model_type = "wukong"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="timm_wrapper", init_kwargs=_DEFAULT_VISION),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert", init_kwargs=_DEFAULT_TEXT),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projection_dim: int = 256
    similarity: str = "token_wise"
    logit_scale_init_value: float = math.log(1 / 0.07)
    logit_scale_max: float = 100.0
    image_size: int = 224
    image_pooling: str = "cls"
    text_pooling: str = "cls"
    num_reduced_tokens: int | None = None
    token_reduction_groups: int = 8
    token_wise_image_cls: bool = False
    token_wise_text_cls: bool = False
    token_wise_text_sep: bool = True
    token_wise_padding: str = "ignore"
    zero_shot_ensemble: str | None = None
    text_position_embeddings: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        # Older config.json files stored the LiT lock, which is now a training decision.
        kwargs.pop("lock_image_tower", None)
        super().__post_init__(**kwargs)
        self._resolve_official_ensemble()
        self._check_choices()
        if not self.text_position_embeddings and self.text_config.model_type != "bert":
            raise ValueError(
                "text_position_embeddings=False needs a BERT text tower (learned absolute position embeddings); "
                f"this config has a {self.text_config.model_type} text tower. Leave text_position_embeddings=True."
            )
        if self.vision_config.model_type == "timm_wrapper":
            # timm models take their input size at construction: keep it in step with image_size.
            model_args = dict(self.vision_config.model_args or {})
            img_size = model_args.setdefault("img_size", self.image_size)
            if img_size != self.image_size:
                raise ValueError(
                    f"vision_config.model_args['img_size']={img_size} disagrees with image_size={self.image_size}; "
                    "set both to the size the image tower was built for."
                )
            self.vision_config.model_args = model_args
        elif self.vision_config.image_size != self.image_size:
            raise ValueError(
                f"vision_config.image_size={self.vision_config.image_size} disagrees with image_size={self.image_size}."
            )

    def _check_choices(self):
        def check(name, value, allowed):
            if value not in allowed:
                raise ValueError(f"Unknown {name} {value!r}: expected one of {', '.join(map(repr, allowed))}.")

        check("similarity", self.similarity, SIMILARITIES)
        check("image tower (vision_config.model_type)", self.vision_config.model_type, VISION_TOWER_TYPES)
        check("text tower (text_config.model_type)", self.text_config.model_type, TEXT_TOWER_TYPES)
        check("image_pooling", self.image_pooling, IMAGE_POOLINGS)
        check("text_pooling", self.text_pooling, TEXT_POOLINGS)
        check("token_wise_padding", self.token_wise_padding, TOKEN_WISE_PADDING)
        if self.zero_shot_ensemble is not None:
            check("zero_shot_ensemble", self.zero_shot_ensemble, ZERO_SHOT_ENSEMBLES)
            if self.zero_shot_ensemble == "embedding" and self.similarity != "global":
                raise ValueError(
                    "zero_shot_ensemble='embedding' averages global text embeddings and needs similarity='global'; "
                    "token-wise models use 'similarity' (paper) or 'probability' (released code)."
                )
        if self.projection_dim <= 0:
            raise ValueError(f"projection_dim must be positive, got {self.projection_dim}.")
        if self.num_reduced_tokens is not None and self.num_reduced_tokens <= 0:
            raise ValueError(f"num_reduced_tokens must be positive or None, got {self.num_reduced_tokens}.")
        if self.num_reduced_tokens is not None and self.projection_dim % self.token_reduction_groups:
            raise ValueError(
                f"projection_dim={self.projection_dim} must be divisible by token_reduction_groups="
                f"{self.token_reduction_groups} for token reduction."
            )

    @property
    def ensemble_method(self) -> str:
        """The zero-shot ensemble this model uses: zero_shot_ensemble, or the paper's choice for its head."""
        if self.zero_shot_ensemble is not None:
            return self.zero_shot_ensemble
        return "embedding" if self.similarity == "global" else "similarity"

    def use_scoring_rule(self, rule: str) -> "WukongConfig":
        """Switch to the "paper" or the "official" (released code) scoring rules; see SCORING_RULES."""
        if rule not in SCORING_RULES:
            raise ValueError(f"Unknown scoring rule {rule!r}: expected one of {', '.join(map(repr, SCORING_RULES))}.")
        for key, value in SCORING_RULES[rule].items():
            setattr(self, key, value)
        self._resolve_official_ensemble()
        self._check_choices()
        return self

    def _resolve_official_ensemble(self) -> None:
        # "official" names the released code's ensemble for this head (stored resolved in config.json).
        if self.zero_shot_ensemble == "official":
            self.zero_shot_ensemble = "embedding" if self.similarity == "global" else "probability"

    @property
    def max_text_length(self) -> int:
        """Number of text tokens the text tower takes (32 in the paper)."""
        return self.text_config.max_position_embeddings
