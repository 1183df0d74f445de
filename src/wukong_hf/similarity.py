"""Global and token-wise (FILIP) similarity between image and text embeddings.

Token-wise similarity of the paper (wukong-facts.md), for image i with n1 counted tokens x_k and
text j with n2 counted tokens y_r:

    image-to-text  s^I_ij = 1/n1 * sum_k max_r <x_k, y_r>
    text-to-image  s^T_ji = 1/n2 * sum_r max_k <y_r, x_k>

s^T is not the transpose of s^I. Masks say which tokens count (True = counts); a row with no
counted token scores 0 rather than NaN.

This module imports only torch: it is copied next to the modeling file when a model is saved
with remote code, so it must stay self-contained.
"""

from __future__ import annotations

import torch

__all__ = ["token_wise_similarity", "global_similarity"]


def _check_token_inputs(image_embeds, text_embeds, image_mask, text_mask):
    if image_embeds.ndim != 3 or text_embeds.ndim != 3:
        raise ValueError(
            "token_wise_similarity expects (batch, tokens, dim) tensors, got image_embeds of shape "
            f"{tuple(image_embeds.shape)} and text_embeds of shape {tuple(text_embeds.shape)}."
        )
    if image_embeds.shape[-1] != text_embeds.shape[-1]:
        raise ValueError(
            f"Embedding dims differ: image_embeds has dim {image_embeds.shape[-1]}, text_embeds has dim "
            f"{text_embeds.shape[-1]}; project both into the same joint space first."
        )
    for name, embeds, mask in (("image", image_embeds, image_mask), ("text", text_embeds, text_mask)):
        if mask is not None and tuple(mask.shape) != tuple(embeds.shape[:2]):
            raise ValueError(
                f"{name}_mask has shape {tuple(mask.shape)} but {name}_embeds has (batch, tokens) = "
                f"{tuple(embeds.shape[:2])}."
            )


def _masked_max_mean(sim: torch.Tensor, max_mask: torch.Tensor, mean_mask: torch.Tensor) -> torch.Tensor:
    """sim: (A, B, n_a, n_b). Max over n_b where max_mask (B, n_b), mean over n_a where mean_mask (A, n_a)."""
    sim = sim.masked_fill(~max_mask[None, :, None, :], float("-inf"))
    best = sim.amax(dim=-1)  # (A, B, n_a)
    # A text (or image) with no counted token has max -inf everywhere: it contributes 0.
    best = torch.where(torch.isfinite(best), best, torch.zeros_like(best))
    best = best * mean_mask[:, None, :].to(best.dtype)
    count = mean_mask.sum(dim=-1).clamp(min=1).to(best.dtype)  # (A,)
    return best.sum(dim=-1) / count[:, None]


def token_wise_similarity(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    image_mask: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    *,
    block_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-wise similarity in both directions.

    Args:
        image_embeds: (I, n1, d) L2-normalised image token embeddings.
        text_embeds: (T, n2, d) L2-normalised text token embeddings.
        image_mask: (I, n1) bool, True where the token counts. None: all count.
        text_mask: (T, n2) bool, True where the token counts. None: all count.
        block_size: texts scored per block, bounding memory at I * block_size * n1 * n2.

    Returns:
        (image_to_text (I, T), text_to_image (T, I)), differentiable.
    """
    _check_token_inputs(image_embeds, text_embeds, image_mask, text_mask)
    if image_mask is None:
        image_mask = torch.ones(image_embeds.shape[:2], dtype=torch.bool, device=image_embeds.device)
    if text_mask is None:
        text_mask = torch.ones(text_embeds.shape[:2], dtype=torch.bool, device=text_embeds.device)
    image_mask, text_mask = image_mask.bool(), text_mask.bool()
    i2t_blocks, t2i_blocks = [], []
    for start in range(0, text_embeds.shape[0], block_size):
        texts = text_embeds[start : start + block_size]
        masks = text_mask[start : start + block_size]
        sim = torch.einsum("ikd,jrd->ijkr", image_embeds, texts)  # (I, Tb, n1, n2)
        i2t_blocks.append(_masked_max_mean(sim, masks, image_mask))
        t2i_blocks.append(_masked_max_mean(sim.permute(1, 0, 3, 2), image_mask, masks))
    return torch.cat(i2t_blocks, dim=1), torch.cat(t2i_blocks, dim=0)


def global_similarity(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """(I, d) x (T, d) -> (I, T) dot products of (normalised) global embeddings."""
    if image_embeds.ndim != 2 or text_embeds.ndim != 2 or image_embeds.shape[-1] != text_embeds.shape[-1]:
        raise ValueError(
            "global_similarity expects (batch, dim) tensors with the same dim, got "
            f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}."
        )
    return image_embeds @ text_embeds.t()
