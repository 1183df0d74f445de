"""Contrastive (InfoNCE) loss of the paper, both directions averaged, on one process or many.

L = 1/2 * (CE(logits_per_image, labels) + CE(logits_per_text, labels)), with the matching pair
of row k at column k. `ContrastiveLoss` computes the same loss over the global batch when
torch.distributed is initialised (Accelerate, any backend): every process contributes its rows
and the whole global batch is the negative set.

This module imports only torch (it travels with remote code); an Accelerator is accepted
duck-typed and never imported.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .similarity import global_similarity, select_top_image_tokens, token_wise_similarity

__all__ = ["contrastive_loss", "ContrastiveLoss"]

_LABELS_CACHE: dict[tuple[int, torch.device], torch.Tensor] = {}
SIMILARITIES = ("global", "token_wise")
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


class ContrastiveLoss(torch.nn.Module):
    """The paper's symmetric InfoNCE over the global batch, for global or token-wise similarity.

    Args:
        similarity: "global" (dot product of the (B, D) embeddings) or "token_wise" (FILIP,
            `token_wise_similarity` on the token embeddings and masks).
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
        similarity: str = "global",
        layout: str = "local",
        block_size: int | None = None,
        image_token_fraction: float | None = None,
    ):
        super().__init__()
        if similarity not in SIMILARITIES:
            raise ValueError(f"Unknown similarity {similarity!r}; choose one of {SIMILARITIES}.")
        if layout not in LAYOUTS:
            raise ValueError(f"Unknown layout {layout!r}; choose one of {LAYOUTS}.")
        if block_size is not None and block_size < 1:
            raise ValueError(f"block_size must be a positive number of rows per tile or None, got {block_size}.")
        if image_token_fraction is not None and not 0.0 < image_token_fraction <= 1.0:
            raise ValueError(f"image_token_fraction must be in (0, 1] or None, got {image_token_fraction}.")
        self.similarity = similarity
        self.layout = layout
        self.block_size = block_size
        self.image_token_fraction = image_token_fraction

    def extra_repr(self) -> str:
        return f"similarity={self.similarity!r}, layout={self.layout!r}, block_size={self.block_size}"

    def _features(self, features: Any, side: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(embeds, mask): (b, D) and None for global; (b, N, D) and (b, N) bool for token-wise."""
        names = ("embeds",) if self.similarity == "global" else ("token_embeds", "token_mask")
        values = [getattr(features, name, None) for name in names]
        if any(value is None for value in values):
            raise ValueError(
                f"{self.similarity} similarity needs {side}_features with {' and '.join('.' + n for n in names)}; "
                f"pass the Wukong{side.title()}Features from WukongModel.encode_{side}."
            )
        return values[0], (values[1].bool() if len(values) == 2 else None)

    def _scores(self, image, image_mask, text, text_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled (image-to-text (I, T), text-to-image (T, I))."""
        if self.similarity == "global":
            image_to_text = global_similarity(image, text)
            return image_to_text, image_to_text.t()
        return token_wise_similarity(
            image, text, image_mask, text_mask, image_block_size=self.block_size, text_block_size=self.block_size
        )

    def forward(
        self, image_features: Any, text_features: Any, logit_scale: torch.Tensor, accelerator: Any = None
    ) -> torch.Tensor:
        """Local loss of this process's b pairs against the global batch.

        Args:
            image_features, text_features: objects with .embeds (b, D), .token_embeds (b, N, D),
                .token_mask (b, N) bool (WukongImageFeatures / WukongTextFeatures); row k of
                both is a positive pair.
            logit_scale: scalar tensor, the exponentiated and clamped scale (model.temperature_scale).
            accelerator: optional Accelerator (duck-typed); only checked for a process group.

        Returns:
            Scalar float32 loss (see the class docstring for how it scales across processes).
        """
        image, image_mask = self._features(image_features, "image")
        text, text_mask = self._features(text_features, "text")
        batch = image.shape[0]
        if text.shape[0] != batch:
            raise ValueError(f"The contrastive loss needs one text per image: got {batch} images and {text.shape[0]} texts.")
        if self.image_token_fraction is not None and self.similarity == "token_wise":
            image_mask = select_top_image_tokens(image, text, image_mask, text_mask, self.image_token_fraction)
        rank, world_size = _world(accelerator)
        if world_size == 1:
            image_to_text, text_to_image = self._scores(image, image_mask, text, text_mask)
            return contrastive_loss(logit_scale * image_to_text, logit_scale * text_to_image)
        _check_equal_batches(batch, world_size, image.device)
        labels = _labels(batch * world_size, image.device)[rank * batch : (rank + 1) * batch]
        all_text = _gather_with_grad(text)
        all_text_mask = None if text_mask is None else _gather_no_grad(text_mask, world_size)
        if self.layout == "local":
            all_image = _gather_with_grad(image)
            all_image_mask = None if image_mask is None else _gather_no_grad(image_mask, world_size)
            image_rows, _ = self._scores(image, image_mask, all_text, all_text_mask)  # (b, W*b)
            _, text_rows = self._scores(all_image, all_image_mask, text, text_mask)  # (b, W*b)
            return 0.5 * (
                F.cross_entropy((logit_scale * image_rows).float(), labels)
                + F.cross_entropy((logit_scale * text_rows).float(), labels)
            )
        image_rows, text_columns = self._scores(image, image_mask, all_text, all_text_mask)  # (b, W*b), (W*b, b)
        image_loss = F.cross_entropy((logit_scale * image_rows).float(), labels)
        text_logits = (logit_scale * text_columns).float()  # every text against this process's images
        # Each text's log-normaliser over all W*b images, from the per-process log-sum-exps.
        normaliser = torch.logsumexp(
            _gather_no_grad(torch.logsumexp(text_logits.detach(), dim=1), world_size).view(world_size, -1), dim=0
        )
        weights = torch.exp(text_logits.detach() - normaliser[:, None])  # softmax of text rows, local columns
        # d(normaliser_j) = sum_i weights_ji d(logit_ji): this term carries that gradient and has value 0.
        normaliser_gradient = (weights * text_logits).sum() / batch
        positives = text_logits[labels, _labels(batch, image.device)]
        text_loss = (normaliser[labels] - positives).mean() + normaliser_gradient - normaliser_gradient.detach()
        return 0.5 * (image_loss + text_loss)
