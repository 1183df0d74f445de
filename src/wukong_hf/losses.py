"""Contrastive (InfoNCE) loss of the paper, both directions averaged, on one process or many.

L = 1/2 * (CE(logits_per_image, labels) + CE(logits_per_text, labels)), with the matching pair
of row k at column k. `ContrastiveLoss` computes the same loss over the global batch when
torch.distributed is initialised (Accelerate, any backend): every process contributes its rows
and the whole global batch is the negative set.

The loss takes the model's features (wukong_hf.features) and its SimilarityRule, and scores
them through `SimilarityRule.scores` like everything else. This module imports only torch (it
travels with remote code); an Accelerator is accepted duck-typed and never imported.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from .similarity import SimilarityRule, select_top_image_tokens

__all__ = ["contrastive_loss", "ContrastiveLoss"]

_LABELS_CACHE: dict[tuple[int, torch.device], torch.Tensor] = {}
LAYOUTS = ("local", "lit")


def _labels(size: int, device: torch.device) -> torch.Tensor:
    key = (size, device)
    if key not in _LABELS_CACHE:
        _LABELS_CACHE[key] = torch.arange(size, device=device)
    return _LABELS_CACHE[key]


def contrastive_loss(logits_per_image: torch.Tensor, logits_per_text: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over square (b, b) logits whose diagonal holds the positive pairs.

    Args:
        logits_per_image: (b, b) scaled image-to-text scores. logits_per_text: (b, b) scaled
            text-to-image scores (for token-wise similarity not the transpose of the first).

    Returns:
        Scalar float32 loss: the mean of the two cross-entropies.
    """
    if logits_per_image.ndim != 2 or logits_per_image.shape[0] != logits_per_image.shape[1]:
        raise ValueError(
            "The contrastive loss needs as many images as texts (one positive pair per row), got logits of shape "
            f"{tuple(logits_per_image.shape)}."
        )
    labels = _labels(logits_per_image.shape[0], logits_per_image.device)
    return 0.5 * (F.cross_entropy(logits_per_image.float(), labels) + F.cross_entropy(logits_per_text.float(), labels))


def _world(accelerator: Any) -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if accelerator is not None and getattr(accelerator, "num_processes", 1) > 1 and not distributed:
        raise RuntimeError(
            f"The accelerator runs {accelerator.num_processes} processes but torch.distributed is not initialised; "
            "start the script with `accelerate launch` so that the global batch can be gathered."
        )
    if not distributed:
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def _gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """(b, ...) on each process -> (W*b, ...); backward sums every process's gradient into its owner."""
    from torch.distributed.nn.functional import all_gather  # imported late: needs a distributed build

    return torch.cat(all_gather(tensor), dim=0)


def _gather_no_grad(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """(b, ...) on each process -> (W*b, ...), without gradient (bool travels as uint8 for gloo)."""
    source = tensor.detach().to(torch.uint8) if tensor.dtype == torch.bool else tensor.detach().contiguous()
    parts = [torch.empty_like(source) for _ in range(world_size)]
    torch.distributed.all_gather(parts, source)
    gathered = torch.cat(parts, dim=0)
    return gathered.bool() if tensor.dtype == torch.bool else gathered


def _check_equal_batches(batch: int, world_size: int, device: torch.device) -> None:
    sizes = _gather_no_grad(torch.tensor([batch], device=device), world_size).tolist()
    if len(set(sizes)) != 1:
        raise ValueError(
            f"Every process must score the same local batch size, got {sizes} across processes; "
            "drop the last incomplete batch (drop_last=True) or pad it."
        )


def _gather_features(features, world_size: int):
    """Features of every process's rows, concatenated in rank order: float rows with gradient, masks without."""
    gathered = {}
    for name in features.ROW_FIELDS:
        value = getattr(features, name)
        if value is not None:
            gathered[name] = _gather_with_grad(value) if value.is_floating_point() else _gather_no_grad(value, world_size)
    return dataclasses.replace(features, **gathered)


class ContrastiveLoss(torch.nn.Module):
    """The paper's symmetric InfoNCE over the global batch, for any SimilarityRule.

    Args:
        rule: how features become scores (`SimilarityRule.from_config(model.config)`, or
            `model.similarity_rule`).
        layout: how the global batch is shared across processes.
            "local": image and text features are all-gathered with gradient; each process scores
            its own images against all texts and its own texts against all images.
            "lit": only text features are gathered (with gradient); image features never leave
            their process. Each process scores its own images against all texts once, which
            yields its image rows and, as columns, the text-to-image scores of every text
            against its images; the text rows' softmax normalisers are summed across processes
            from per-process log-sum-exps (B numbers, no gradient). Half the token-wise work of
            "local", no image communication, and still exact gradients for trainable image
            projections.
        block_size: texts and images per tile of the token-wise kernel (None: automatic).
        image_token_fraction: FILIP's top-token selection (e.g. 0.25), made on each process
            against its local texts before anything is gathered. None: keep all tokens.

    Scaling: the all-gather's backward sums the gradient that every process sends to a row into
    the process owning it, and each process returns the mean loss of its own rows (unscaled).
    DDP then averages parameter gradients over the W processes, which gives exactly the
    gradient of one process running the concatenated batch of W*b pairs; the mean of the
    returned losses equals that process's loss. Every process must pass the same local batch.
    """

    def __init__(
        self,
        rule: SimilarityRule,
        layout: str = "local",
        block_size: int | None = None,
        image_token_fraction: float | None = None,
    ):
        super().__init__()
        if not isinstance(rule, SimilarityRule):
            raise TypeError(
                f"ContrastiveLoss takes a SimilarityRule (e.g. model.similarity_rule), got {type(rule).__name__} {rule!r}."
            )
        if layout not in LAYOUTS:
            raise ValueError(f"Unknown layout {layout!r}; choose one of {LAYOUTS}.")
        if block_size is not None and block_size < 1:
            raise ValueError(f"block_size must be a positive number of rows per tile or None, got {block_size}.")
        if image_token_fraction is not None and not 0.0 < image_token_fraction <= 1.0:
            raise ValueError(f"image_token_fraction must be in (0, 1] or None, got {image_token_fraction}.")
        self.rule = rule
        self.layout = layout
        self.block_size = block_size
        self.image_token_fraction = image_token_fraction

    def extra_repr(self) -> str:
        return f"rule={self.rule}, layout={self.layout!r}, block_size={self.block_size}"

    def _scores(self, image, text) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled (image-to-text (I, T), text-to-image (T, I)) by the rule."""
        return self.rule.scores(image, text, image_block_size=self.block_size, text_block_size=self.block_size)

    def _checked(self, features, side: str):
        if self.rule.uses_tokens and (features.token_embeds is None or features.token_mask is None):
            raise ValueError(
                f"{self.rule.kind} similarity needs {side}_features with .token_embeds and .token_mask; "
                f"pass the Wukong{side.title()}Features from WukongModel.encode_{side}."
            )
        # Only what the rule reads travels between processes.
        return features if self.rule.uses_tokens else features.without_tokens()

    def forward(self, image_features, text_features, inverse_temperature: torch.Tensor, accelerator: Any = None) -> torch.Tensor:
        """Local loss of this process's b pairs against the global batch.

        Args:
            image_features, text_features: WukongImageFeatures / WukongTextFeatures of b rows each;
                row k of both is a positive pair.
            inverse_temperature: scalar tensor, the logits' multiplier (model.inverse_temperature).
            accelerator: optional Accelerator (duck-typed); only checked for a process group.

        Returns:
            Scalar float32 loss (see the class docstring for how it scales across processes).
        """
        scale = inverse_temperature
        image, text = self._checked(image_features, "image"), self._checked(text_features, "text")
        batch = len(image)
        if len(text) != batch:
            raise ValueError(f"The contrastive loss needs one text per image: got {batch} images and {len(text)} texts.")
        if self.image_token_fraction is not None and self.rule.uses_tokens:
            image = dataclasses.replace(image, token_mask=select_top_image_tokens(
                image.token_embeds, text.token_embeds, image.token_mask, text.token_mask, self.image_token_fraction))
        rank, world_size = _world(accelerator)
        if world_size == 1:
            image_to_text, text_to_image = self._scores(image, text)
            return contrastive_loss(scale * image_to_text, scale * text_to_image)
        _check_equal_batches(batch, world_size, image.embeds.device)
        labels = _labels(batch * world_size, image.embeds.device)[rank * batch : (rank + 1) * batch]
        all_text = _gather_features(text, world_size)
        if self.layout == "local":
            all_image = _gather_features(image, world_size)
            image_rows, _ = self._scores(image, all_text)  # (b, W*b)
            _, text_rows = self._scores(all_image, text)  # (b, W*b)
            return 0.5 * (
                F.cross_entropy((scale * image_rows).float(), labels)
                + F.cross_entropy((scale * text_rows).float(), labels)
            )
        image_rows, text_columns = self._scores(image, all_text)  # (b, W*b), (W*b, b)
        image_loss = F.cross_entropy((scale * image_rows).float(), labels)
        text_logits = (scale * text_columns).float()  # every text against this process's images
        # Each text's log-normaliser over all W*b images, from the per-process log-sum-exps.
        normaliser = torch.logsumexp(
            _gather_no_grad(torch.logsumexp(text_logits.detach(), dim=1), world_size).view(world_size, -1), dim=0
        )
        weights = torch.exp(text_logits.detach() - normaliser[:, None])  # softmax of text rows, local columns
        # d(normaliser_j) = sum_i weights_ji d(logit_ji): this term carries that gradient and has value 0.
        normaliser_gradient = (weights * text_logits).sum() / batch
        positives = text_logits[labels, _labels(batch, image.embeds.device)]
        text_loss = (normaliser[labels] - positives).mean() + normaliser_gradient - normaliser_gradient.detach()
        return 0.5 * (image_loss + text_loss)
