"""Global and token-wise (FILIP) similarity between image and text embeddings.

Token-wise similarity of the paper (docs/wukong-facts.md), for image i with n1 counted tokens x_k and
text j with n2 counted tokens y_r:

    image-to-text  s^I_ij = 1/n1 * sum_k max_r <x_k, y_r>
    text-to-image  s^T_ji = 1/n2 * sum_r max_k <y_r, x_k>

s^T is not the transpose of s^I. Masks say which tokens count (True = counts); a row with no
counted token scores 0 rather than NaN, and the mean's count is clamped at 1. The released
evaluation code differs in one place (`zero_padded_texts`): its image-to-text max also runs over
the zero vectors of a text's padded positions, so it never falls below 0 for a padded text.

`SimilarityRule.scores` (end of this file) is the one function that decides, from a model's
config, which of these a pair of feature sets gets.

Memory: the naive form materialises an (I, T, n1, n2) tensor and autograd keeps several copies of
it. Here the scores are computed tile by tile over images and texts; the forward keeps only the
argmax index of every max (one byte or two per token pair of a direction), and the backward
rebuilds each tile's sparse gradient and applies it with two matmuls. Peak memory is a few tiles
plus I*T*(n1+n2) small indices; gradients equal autograd through the naive form (at exact ties
the first maximal token takes the whole gradient, as with torch.max, where torch.amax would split it).
The gradient jumps where a max changes hands, so in fp32 a near-tie closer than a dot product's
rounding (a few maxima in ten million) can pick another winner than float64 would; that, not the
accumulation, bounds the agreement of fp32 gradients with a float64 reference.

This module imports only torch: it is copied next to the modeling file when a model is saved
with remote code, so it must stay self-contained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SimilarityRule", "token_wise_similarity", "global_similarity", "select_top_image_tokens"]

# Default tile: about 4M scores (16 MB in fp32), big enough for efficient matmuls, small enough
# that the few tile-sized temporaries stay in the low hundreds of MB.
_TILE_ELEMENTS = 1 << 22
_HALF_DTYPES = (torch.float16, torch.bfloat16)


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


def _full_mask(embeds: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
    return mask.to(device=embeds.device, dtype=torch.bool)


def _index_dtype(num_tokens: int) -> torch.dtype:
    # The saved argmax indices dominate the kept memory: store them in the smallest integer type.
    return torch.uint8 if num_tokens <= 256 else torch.int16 if num_tokens <= 32767 else torch.int64


def _block_sizes(
    num_images: int, num_texts: int, n1: int, n2: int, image_block_size: int | None, text_block_size: int | None
) -> tuple[int, int]:
    text_block = text_block_size or max(1, min(num_texts, 128))
    image_block = image_block_size or max(1, _TILE_ELEMENTS // max(1, text_block * n1 * n2))
    if text_block < 1 or image_block < 1:
        raise ValueError(f"Tile sizes must be positive, got image_block_size={image_block}, text_block_size={text_block}.")
    return min(image_block, max(num_images, 1)), min(text_block, max(num_texts, 1))


def _tile_scores(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x: (Ib, n1, d), y: (Tb, n2, d) -> (Ib, n1, Tb, n2) token dot products as one matmul."""
    ib, n1, d = x.shape
    tb, n2, _ = y.shape
    return (x.reshape(ib * n1, d) @ y.reshape(tb * n2, d).t()).view(ib, n1, tb, n2)


def _token_wise_tiles(
    image_embeds, text_embeds, image_mask, text_mask, text_floor, image_block, text_block, compute_dtype, keep_indices
):
    """Both score matrices, tile by tile; with keep_indices also every max's winning token (for the backward).

    text_floor: None, or (T,) values that every image token's max over text j starts from (the
    released code's padded positions offer 0; -inf where a text has no padding). With
    keep_indices, also returns where a real token beat the floor (the floor carries no gradient).
    Without keep_indices (inference, nothing needs a gradient) the maxima are taken with amax,
    about 8x faster on CPU than max with indices, and no index tensor is allocated.
    """
    num_images, n1, _ = image_embeds.shape
    num_texts, n2, _ = text_embeds.shape
    device = image_embeds.device
    image_count = image_mask.sum(-1).clamp(min=1).to(compute_dtype)  # (I,)
    text_count = text_mask.sum(-1).clamp(min=1).to(compute_dtype)  # (T,)
    image_valid, text_valid = image_mask.any(-1), text_mask.any(-1)
    image_padded, text_padded = not bool(image_mask.all()), not bool(text_mask.all())
    zero = torch.zeros((), dtype=compute_dtype, device=device)
    i2t = torch.zeros(num_images, num_texts, dtype=compute_dtype, device=device)
    t2i = torch.zeros(num_texts, num_images, dtype=compute_dtype, device=device)
    best_text_token = best_image_token = real_token_won = None
    if keep_indices:
        best_text_token = torch.empty(num_images, n1, num_texts, dtype=_index_dtype(n2), device=device)
        best_image_token = torch.empty(num_images, num_texts, n2, dtype=_index_dtype(n1), device=device)
        if text_floor is not None:
            real_token_won = torch.empty(num_images, n1, num_texts, dtype=torch.bool, device=device)
    if text_floor is not None:
        text_floor = text_floor.to(device=device, dtype=compute_dtype)
    for i0 in range(0, num_images, image_block):
        i1 = min(i0 + image_block, num_images)
        x = image_embeds[i0:i1].to(compute_dtype)
        x_mask = image_mask[i0:i1]
        for j0 in range(0, num_texts, text_block):
            j1 = min(j0 + text_block, num_texts)
            y_mask = text_mask[j0:j1]
            scores = _tile_scores(x, text_embeds[j0:j1].to(compute_dtype))  # (Ib, n1, Tb, n2)
            # The masks go in place, one after the other, so the tile is never copied: padded text
            # tokens r never win a max over r and padded image tokens k never win one over k; the
            # -inf rows they leave are zeroed by the torch.where calls below.
            # text-to-image: max over the image's counted tokens, mean over the text's counted tokens
            if image_padded:
                scores.masked_fill_(~x_mask[:, :, None, None], float("-inf"))
            if keep_indices:
                best, arg = scores.max(dim=1)  # (Ib, Tb, n2)
                best_image_token[i0:i1, j0:j1] = arg.to(best_image_token.dtype)
            else:
                best = scores.amax(dim=1)
            best = torch.where(image_valid[i0:i1, None, None] & y_mask[None], best, zero)
            t2i[j0:j1, i0:i1] = (best.sum(2) / text_count[None, j0:j1]).t()
            # image-to-text: max over the text's counted tokens, mean over the image's counted tokens
            if text_padded:
                scores.masked_fill_(~y_mask[None, None], float("-inf"))
            if keep_indices:
                best, arg = scores.max(dim=3)  # (Ib, n1, Tb)
                best_text_token[i0:i1, :, j0:j1] = arg.to(best_text_token.dtype)
            else:
                best = scores.amax(dim=3)
            if text_floor is not None:
                floor = text_floor[None, None, j0:j1]
                if keep_indices:
                    real_token_won[i0:i1, :, j0:j1] = best >= floor
                best = torch.maximum(best, floor)
            best = torch.where(x_mask[:, :, None] & text_valid[None, None, j0:j1], best, zero)
            i2t[i0:i1, j0:j1] = best.sum(1) / image_count[i0:i1, None]
            del scores, best
    return i2t, t2i, best_text_token, best_image_token, real_token_won


class _TokenWiseSimilarity(torch.autograd.Function):
    """Tiled token-wise similarity; saves argmax indices instead of the 4-D score tensor."""

    @staticmethod
    def forward(ctx, image_embeds, text_embeds, image_mask, text_mask, text_floor, image_block, text_block, compute_dtype):
        i2t, t2i, best_text_token, best_image_token, real_token_won = _token_wise_tiles(
            image_embeds, text_embeds, image_mask, text_mask, text_floor, image_block, text_block, compute_dtype,
            keep_indices=True,
        )
        ctx.save_for_backward(
            image_embeds, text_embeds, image_mask, text_mask, best_text_token, best_image_token, real_token_won
        )
        ctx.blocks = (image_block, text_block)
        ctx.compute_dtype = compute_dtype
        return i2t, t2i

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_i2t, grad_t2i):
        image_embeds, text_embeds, image_mask, text_mask, best_text_token, best_image_token, real_token_won = (
            ctx.saved_tensors
        )
        image_block, text_block = ctx.blocks
        dtype = ctx.compute_dtype
        num_images, n1, d = image_embeds.shape
        num_texts, n2, _ = text_embeds.shape
        # d s^I_ij / d score[i,k,j,r*] = mask_ik * [text j has a counted token] / n1_i, and likewise for s^T.
        coef_i2t = grad_i2t.to(dtype) * text_mask.any(-1)[None] / image_mask.sum(-1).clamp(min=1)[:, None]  # (I, T)
        coef_t2i = grad_t2i.to(dtype) * image_mask.any(-1)[None] / text_mask.sum(-1).clamp(min=1)[:, None]  # (T, I)
        image_mask_c, text_mask_c = image_mask.to(dtype), text_mask.to(dtype)
        grad_image = torch.zeros(num_images, n1, d, dtype=dtype, device=image_embeds.device)
        grad_text = torch.zeros(num_texts, n2, d, dtype=dtype, device=text_embeds.device)
        for i0 in range(0, num_images, image_block):
            i1 = min(i0 + image_block, num_images)
            x = image_embeds[i0:i1].to(dtype)
            ib = i1 - i0
            for j0 in range(0, num_texts, text_block):
                j1 = min(j0 + text_block, num_texts)
                tb = j1 - j0
                y = text_embeds[j0:j1].to(dtype)
                # The sparse gradient of the tile's scores: one entry per max of either direction.
                weight = torch.zeros(ib, n1, tb, n2, dtype=dtype, device=x.device)
                w_i2t = coef_i2t[i0:i1, None, j0:j1] * image_mask_c[i0:i1, :, None]  # (Ib, n1, Tb)
                if real_token_won is not None:  # where the padding floor won, no token gets the gradient
                    w_i2t = w_i2t * real_token_won[i0:i1, :, j0:j1]
                weight.scatter_add_(3, best_text_token[i0:i1, :, j0:j1].long().unsqueeze(3), w_i2t.unsqueeze(3))
                w_t2i = coef_t2i[j0:j1, i0:i1].t()[:, :, None] * text_mask_c[None, j0:j1]  # (Ib, Tb, n2)
                weight.scatter_add_(1, best_image_token[i0:i1, j0:j1].long().unsqueeze(1), w_t2i.unsqueeze(1))
                weight = weight.view(ib * n1, tb * n2)
                grad_image[i0:i1] += (weight @ y.reshape(tb * n2, d)).view(ib, n1, d)
                grad_text[j0:j1] += (weight.t() @ x.reshape(ib * n1, d)).view(tb, n2, d)
                del weight
        return (
            grad_image.to(image_embeds.dtype) if ctx.needs_input_grad[0] else None,
            grad_text.to(text_embeds.dtype) if ctx.needs_input_grad[1] else None,
            None, None, None, None, None, None,
        )


@torch.no_grad()
def select_top_image_tokens(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    image_mask: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    fraction: float = 0.25,
    *,
    text_block_size: int = 128,
) -> torch.Tensor:
    """FILIP's token selection: keep each image's most text-like tokens.

    Every counted image token is ranked by its highest similarity to any counted token of any
    text passed in (FILIP: the texts of the local batch); each image keeps its top
    ceil(fraction * counted tokens) tokens, at least one. Ties go to the earlier token.

    Args:
        image_embeds: (I, n1, d). text_embeds: (T, n2, d). image_mask: (I, n1) bool or None.
        text_mask: (T, n2) bool or None. fraction: in (0, 1].

    Returns:
        (I, n1) bool mask, a subset of image_mask. Not differentiable (a selection).
    """
    _check_token_inputs(image_embeds, text_embeds, image_mask, text_mask)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"The image token fraction must be in (0, 1], got {fraction}; FILIP uses 0.25.")
    image_mask = _full_mask(image_embeds, image_mask)
    text_mask = _full_mask(text_embeds, text_mask)
    dtype = torch.float32 if image_embeds.dtype in _HALF_DTYPES else image_embeds.dtype
    x = image_embeds.to(dtype).reshape(-1, image_embeds.shape[-1])  # (I*n1, d)
    relevance = torch.full((x.shape[0],), float("-inf"), dtype=dtype, device=x.device)
    for j0 in range(0, text_embeds.shape[0], text_block_size):
        y = text_embeds[j0 : j0 + text_block_size].to(dtype)
        y = y[text_mask[j0 : j0 + text_block_size]]  # counted tokens only, (m, d)
        if y.shape[0]:
            relevance = torch.maximum(relevance, (x @ y.t()).amax(dim=1))
    relevance = relevance.view(image_mask.shape).masked_fill(~image_mask, float("-inf"))
    keep = torch.ceil(fraction * image_mask.sum(-1).to(torch.float64)).long().clamp(min=1)  # (I,)
    order = torch.sort(relevance, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return image_mask & (ranks < keep[:, None])


def token_wise_similarity(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    image_mask: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    *,
    zero_padded_texts: torch.Tensor | None = None,
    image_token_fraction: float | None = None,
    accumulate_fp32: bool = True,
    image_block_size: int | None = None,
    text_block_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-wise similarity in both directions, tiled, with exact gradients.

    Args:
        image_embeds: (I, n1, d) L2-normalised image token embeddings (token reduction output
            works as is).
        text_embeds: (T, n2, d) L2-normalised text token embeddings.
        image_mask: (I, n1) bool, True where the token counts. None: all count.
        text_mask: (T, n2) bool, True where the token counts. None: all count.
        zero_padded_texts: (T,) bool or None. The released code's image-to-text rule: for a text
            marked True (one its fixed-length layout pads), every image token's max over the
            text's tokens also sees the padded positions, which offer a similarity of exactly 0.
            None: padding never takes part (the paper's rule).
        image_token_fraction: keep only this fraction of each image's counted tokens, chosen by
            `select_top_image_tokens` against these texts (FILIP: 0.25). None: keep all.
        accumulate_fp32: with float16/bfloat16 inputs, compute the tiles and the scores in fp32.
        image_block_size, text_block_size: images and texts per tile. None: texts 128, images
            so that a tile holds about 4M scores.

    Returns:
        (image_to_text (I, T), text_to_image (T, I)); dtype float32 for half inputs with
        accumulate_fp32, else the input dtype. Differentiable once (no double backward).
    """
    _check_token_inputs(image_embeds, text_embeds, image_mask, text_mask)
    image_mask = _full_mask(image_embeds, image_mask)
    text_mask = _full_mask(text_embeds, text_mask)
    text_floor = None
    if zero_padded_texts is not None:
        if tuple(zero_padded_texts.shape) != (text_embeds.shape[0],):
            raise ValueError(
                f"zero_padded_texts has shape {tuple(zero_padded_texts.shape)} but there are {text_embeds.shape[0]} "
                "texts; give one bool per text."
            )
        text_floor = torch.where(zero_padded_texts.to(text_embeds.device).bool(), 0.0, float("-inf"))
    if image_token_fraction is not None:
        image_mask = select_top_image_tokens(image_embeds, text_embeds, image_mask, text_mask, image_token_fraction)
    dtype = torch.promote_types(image_embeds.dtype, text_embeds.dtype)
    if accumulate_fp32 and dtype in _HALF_DTYPES:
        dtype = torch.float32
    image_block, text_block = _block_sizes(
        image_embeds.shape[0], text_embeds.shape[0], image_embeds.shape[1], text_embeds.shape[1],
        image_block_size, text_block_size,
    )
    if not (torch.is_grad_enabled() and (image_embeds.requires_grad or text_embeds.requires_grad)):
        # Inference (evaluation, retrieval): no backward, so no argmax indices to keep.
        i2t, t2i, *_ = _token_wise_tiles(
            image_embeds, text_embeds, image_mask, text_mask, text_floor, image_block, text_block, dtype,
            keep_indices=False,
        )
        return i2t, t2i
    return _TokenWiseSimilarity.apply(
        image_embeds, text_embeds, image_mask, text_mask, text_floor, image_block, text_block, dtype
    )


def global_similarity(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """(I, d) x (T, d) -> (I, T) dot products of (normalised) global embeddings."""
    if image_embeds.ndim != 2 or text_embeds.ndim != 2 or image_embeds.shape[-1] != text_embeds.shape[-1]:
        raise ValueError(
            "global_similarity expects (batch, dim) tensors with the same dim, got "
            f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}."
        )
    return image_embeds @ text_embeds.t()


# ----- the scoring rule: the one place that decides how features become scores --------------------
SIMILARITY_KINDS = ("global", "token_wise")
TOKEN_WISE_PADDING = ("ignore", "zero")


@dataclass(frozen=True)
class SimilarityRule:
    """How a model turns image and text features into scores (stored in its config.json).

    kind: "global" (dot product of the global embeddings) or "token_wise" (FILIP late
        interaction over the counted tokens).
    padding: token-wise image-to-text only. "ignore" (the paper): padded text positions never
        take part. "zero" (the released evaluation code): the text is padded to the tower's
        fixed length, its padded rows are zero vectors, and each image token's max runs over
        all positions, so a padded position offers 0, which wins when every real token is
        negative.
    """

    kind: str = "token_wise"
    padding: str = "ignore"

    def __post_init__(self):
        if self.kind not in SIMILARITY_KINDS:
            raise ValueError(f"Unknown similarity {self.kind!r}: expected one of {', '.join(map(repr, SIMILARITY_KINDS))}.")
        if self.padding not in TOKEN_WISE_PADDING:
            raise ValueError(
                f"Unknown token_wise_padding {self.padding!r}: expected one of {', '.join(map(repr, TOKEN_WISE_PADDING))}."
            )

    @classmethod
    def from_config(cls, config) -> "SimilarityRule":
        """The rule of a WukongConfig (fields `similarity` and `token_wise_padding`)."""
        return cls(kind=config.similarity, padding=getattr(config, "token_wise_padding", "ignore"))

    @property
    def uses_tokens(self) -> bool:
        """Whether scores read token_embeds/token_mask (else only the global embeds)."""
        return self.kind == "token_wise"

    def scores(
        self,
        image_features,
        text_features,
        *,
        image_token_fraction: float | None = None,
        image_block_size: int | None = None,
        text_block_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled (image_to_text (I, T), text_to_image (T, I)) of WukongImageFeatures x WukongTextFeatures.

        This is the only place that decides how a kind of similarity is computed; the model's
        logits, the loss, zero-shot ensembles, retrieval and the Space all come through here.
        image_token_fraction and the block sizes only concern token-wise scoring (see
        `token_wise_similarity`).
        """
        if self.kind == "global":
            image_to_text = global_similarity(image_features.embeds, text_features.embeds)
            return image_to_text, image_to_text.t()
        if image_features.token_embeds is None or text_features.token_embeds is None:
            raise ValueError(
                "token-wise scoring needs token features (token_embeds and token_mask); these features were made "
                "without them. Encode with the model's own encode_image/encode_text."
            )
        zero_padded = None
        if self.padding == "zero":
            zero_padded = text_features.has_padding
            if zero_padded is None:
                raise ValueError(
                    "token_wise_padding='zero' needs text features with has_padding (from WukongModel.encode_text)."
                )
        return token_wise_similarity(
            image_features.token_embeds,
            text_features.token_embeds,
            image_features.token_mask,
            text_features.token_mask,
            zero_padded_texts=zero_padded,
            image_token_fraction=image_token_fraction,
            image_block_size=image_block_size,
            text_block_size=text_block_size,
        )
