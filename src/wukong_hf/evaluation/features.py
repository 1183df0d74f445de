"""Run each tower once per item and keep the features: the cache every evaluation scores from.

Images and texts are encoded in batches (tqdm progress); unreadable images are skipped and
reported by index rather than stopping a long run.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..similarity import global_similarity, token_wise_similarity

__all__ = ["FeatureBank", "encode_images", "encode_texts", "pairwise_scores", "open_rgb"]

logger = logging.getLogger(__name__)

ImageLoader = Callable[[], Image.Image]


@dataclass
class FeatureBank:
    """Cached features of N items.

    embeds: (N, D) normalised global embeddings. token_embeds: (N, L, D) normalised token
    embeddings, None for global-only scoring. token_mask: (N, L) bool, True where a token counts.
    """

    embeds: torch.Tensor
    token_embeds: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def select(self, index: torch.Tensor | slice | list[int]) -> "FeatureBank":
        """The features of a subset of items (index into the first axis)."""
        return FeatureBank(
            self.embeds[index],
            None if self.token_embeds is None else self.token_embeds[index],
            None if self.token_mask is None else self.token_mask[index],
        )

    @classmethod
    def concat(cls, banks: Sequence["FeatureBank"]) -> "FeatureBank":
        """Concatenate banks along the item axis."""
        if not banks:
            raise ValueError("No features to concatenate: every item was skipped or the input was empty.")
        tokens = None if banks[0].token_embeds is None else torch.cat([b.token_embeds for b in banks])
        masks = None if banks[0].token_mask is None else torch.cat([b.token_mask for b in banks])
        return cls(torch.cat([b.embeds for b in banks]), tokens, masks)


def open_rgb(source: str | bytes) -> Image.Image:
    """An RGB PIL image from a path or encoded bytes; raises OSError/ValueError when unreadable."""
    image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    image.load()
    return image.convert("RGB")


def _bank_from(features, keep_tokens: bool) -> FeatureBank:
    return FeatureBank(
        features.embeds.float().cpu(),
        features.token_embeds.float().cpu() if keep_tokens else None,
        features.token_mask.cpu() if keep_tokens else None,
    )


@torch.no_grad()
def encode_images(
    model,
    processor,
    loaders: Sequence[ImageLoader],
    batch_size: int = 64,
    desc: str = "images",
) -> tuple[FeatureBank, list[int], list[tuple[int, str]]]:
    """Encode images once each.

    Args:
        model: a WukongModel (eval mode). processor: its WukongProcessor.
        loaders: one zero-argument callable per image returning a PIL image (lazy, so memory
            holds one batch of pixels at a time).

    Returns:
        (features of the readable images in input order, their input indices,
         [(index, reason)] for every image that could not be read).
    """
    keep_tokens = model.config.similarity == "token_wise"
    device = next(model.parameters()).device
    banks, kept, skipped = [], [], []
    progress = tqdm(total=len(loaders), desc=f"encoding {desc}", unit="img")
    for start in range(0, len(loaders), batch_size):
        images, indices = [], []
        for i in range(start, min(start + batch_size, len(loaders))):
            try:
                images.append(loaders[i]())
                indices.append(i)
            except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three on corrupt files
                skipped.append((i, f"{type(err).__name__}: {err}"))
        if images:
            pixels = processor(images=images)["pixel_values"].to(device)
            banks.append(_bank_from(model.encode_image(pixels), keep_tokens))
            kept.extend(indices)
        progress.update(min(batch_size, len(loaders) - start))
    progress.close()
    if skipped:
        logger.warning("skipped %d unreadable image(s), first: %s", len(skipped), skipped[0])
    return FeatureBank.concat(banks), kept, skipped


@torch.no_grad()
def encode_texts(model, processor, texts: Sequence[str], batch_size: int = 256, desc: str = "texts") -> FeatureBank:
    """Encode texts once each (over-long texts are truncated to the model's length) -> FeatureBank of len(texts)."""
    keep_tokens = model.config.similarity == "token_wise"
    device = next(model.parameters()).device
    banks = []
    for start in tqdm(range(0, len(texts), batch_size), desc=f"encoding {desc}", unit="batch"):
        inputs = processor(text=list(texts[start : start + batch_size]))
        banks.append(
            _bank_from(
                model.encode_text(inputs["input_ids"].to(device), inputs["attention_mask"].to(device)), keep_tokens
            )
        )
    return FeatureBank.concat(banks)


def pairwise_scores(images: FeatureBank, texts: FeatureBank, similarity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Unscaled (image_to_text (I, T), text_to_image (T, I)) scores of two banks.

    similarity: "global" (dot products of global embeddings, symmetric) or "token_wise"
    (wukong_hf.similarity.token_wise_similarity). Callers bound memory by passing blocks of images.
    """
    if similarity == "global":
        scores = global_similarity(images.embeds, texts.embeds)
        return scores, scores.t()
    if images.token_embeds is None or texts.token_embeds is None:
        raise ValueError("token-wise scoring needs token features; encode with a token-wise model.")
    return token_wise_similarity(images.token_embeds, texts.token_embeds, images.token_mask, texts.token_mask)
