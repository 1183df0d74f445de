"""Contrastive (InfoNCE) loss of the paper, both directions averaged.

L = 1/2 * (CE(logits_per_image, labels) + CE(logits_per_text, labels)), with the matching pair
of row k at column k. This module imports only torch (it travels with remote code).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["contrastive_loss"]

_LABELS_CACHE: dict[tuple[int, torch.device], torch.Tensor] = {}


def _labels(size: int, device: torch.device) -> torch.Tensor:
    key = (size, device)
    if key not in _LABELS_CACHE:
        _LABELS_CACHE[key] = torch.arange(size, device=device)
    return _LABELS_CACHE[key]


def contrastive_loss(logits_per_image: torch.Tensor, logits_per_text: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over square (b, b) logits whose diagonal holds the positive pairs."""
    if logits_per_image.ndim != 2 or logits_per_image.shape[0] != logits_per_image.shape[1]:
        raise ValueError(
            "The contrastive loss needs as many images as texts (one positive pair per row), got logits of shape "
            f"{tuple(logits_per_image.shape)}."
        )
    labels = _labels(logits_per_image.shape[0], logits_per_image.device)
    return 0.5 * (F.cross_entropy(logits_per_image.float(), labels) + F.cross_entropy(logits_per_text.float(), labels))
