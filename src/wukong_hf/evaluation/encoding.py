"""Run each tower once per item and keep the features: the cache every evaluation scores from.

Images and texts are encoded in batches (tqdm progress) into the model's own feature types
(WukongImageFeatures / WukongTextFeatures, float32 on the CPU; token features only where the
model's similarity rule reads them); unreadable images are skipped and reported by index rather
than stopping a long run. Scores come from `SimilarityRule.scores`, as everywhere.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..features import WukongImageFeatures, WukongTextFeatures

__all__ = ["encode_images", "encode_texts", "open_rgb"]

logger = logging.getLogger(__name__)

ImageLoader = Callable[[], Image.Image]


def open_rgb(source: str | bytes) -> Image.Image:
    """An RGB PIL image from a path or encoded bytes; raises OSError/ValueError when unreadable."""
    image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    image.load()
    return image.convert("RGB")


def _kept(features, model):
    # Cached on the CPU in float32; token features only where the model's scores read them.
    features = features.to("cpu", torch.float32)
    return features if model.similarity_rule.uses_tokens else features.without_tokens()


@torch.no_grad()
def encode_images(
    model,
    processor,
    loaders: Sequence[ImageLoader],
    batch_size: int = 64,
    desc: str = "images",
) -> tuple[WukongImageFeatures, list[int], list[tuple[int, str]]]:
    """Encode images once each.

    Args:
        model: a WukongModel (eval mode). processor: its WukongProcessor.
        loaders: one zero-argument callable per image returning a PIL image (lazy, so memory
            holds one batch of pixels at a time).

    Returns:
        (features of the readable images in input order, their input indices,
         [(index, reason)] for every image that could not be read).
    """
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
            banks.append(_kept(model.encode_image(pixels), model))
            kept.extend(indices)
        progress.update(min(batch_size, len(loaders) - start))
    progress.close()
    if skipped:
        logger.warning("skipped %d unreadable image(s), first: %s", len(skipped), skipped[0])
    return WukongImageFeatures.concat(banks), kept, skipped


@torch.no_grad()
def encode_texts(
    model, processor, texts: Sequence[str], batch_size: int = 256, desc: str = "texts"
) -> WukongTextFeatures:
    """Encode texts once each (over-long texts are truncated to the model's length) -> features of len(texts)."""
    device = next(model.parameters()).device
    banks = []
    for start in tqdm(range(0, len(texts), batch_size), desc=f"encoding {desc}", unit="batch"):
        inputs = processor(text=list(texts[start : start + batch_size]))
        banks.append(_kept(model.encode_text(inputs["input_ids"].to(device), inputs["attention_mask"].to(device)), model))
    return WukongTextFeatures.concat(banks)
