"""Run each tower once per item and keep the features: the cache every evaluation scores from.

Images and texts are encoded in batches (tqdm progress) into the model's own feature types
(WukongImageFeatures / WukongTextFeatures, float32 on the CPU; token features only where the
model's similarity rule reads them); unreadable images are skipped and reported by index rather
than stopping a long run. Scores come from `SimilarityRule.scores`, as everywhere.

Speed without changing a score (benchmarks/cpu_inference.py):
- texts are tokenized once without padding, sorted by length, and each batch is padded only to
  its own longest text, so the text tower never runs on padding it would mask anyway; the token
  features are then laid out at the longest text of the whole set (not the tower's 32), which
  also shortens token-wise scoring. Padding never changes a score: padded positions are masked
  (token_mask False) and `has_padding` still says whether a text is shorter than the tower.
- the next batch of images is read and preprocessed in a background thread while the image
  tower runs (PIL decoding and resizing release the GIL).
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..features import WukongImageFeatures, WukongTextFeatures

__all__ = ["encode_images", "encode_texts", "open_rgb", "pad_text_tokens", "model_device", "NoReadableImages"]

logger = logging.getLogger(__name__)

ImageLoader = Callable[[], Image.Image]


def open_rgb(source: str | bytes) -> Image.Image:
    """An RGB PIL image from a path or encoded bytes; raises OSError/ValueError when unreadable."""
    image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    image.load()
    return image.convert("RGB")


def model_device(model) -> torch.device:
    """The device of a torch model's weights; the CPU for encoders without torch parameters (ONNX Runtime)."""
    parameters = getattr(model, "parameters", None)
    if parameters is None:
        return torch.device("cpu")
    try:
        return next(parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _kept(features, model, keep_tokens: bool | None = None):
    # Cached on the CPU in float32; token features only where the model's scores read them (or asked for).
    features = features.to("cpu", torch.float32)
    keep = model.similarity_rule.uses_tokens if keep_tokens is None else keep_tokens
    return features if keep and features.token_embeds is not None else features.without_tokens()


def pad_text_tokens(features: WukongTextFeatures, length: int) -> WukongTextFeatures:
    """Text features with token_embeds/token_mask padded to `length` positions (zero vectors, mask False).

    Scores do not change: positions with token_mask False never take part, and `has_padding`
    (whether a text is shorter than the tower's context) is kept as it was.
    """
    if features.token_embeds is None or features.token_embeds.shape[1] == length:
        return features
    extra = length - features.token_embeds.shape[1]
    if extra < 0:
        raise ValueError(f"Cannot pad text tokens of length {features.token_embeds.shape[1]} down to {length}.")
    return dataclasses.replace(
        features,
        token_embeds=F.pad(features.token_embeds, (0, 0, 0, extra)),
        token_mask=F.pad(features.token_mask, (0, extra), value=False),
    )


def _load_batch(loaders: Sequence[ImageLoader], start: int, stop: int, processor):
    """Read and preprocess images start..stop-1 -> (pixel_values or None, kept indices, [(index, reason)])."""
    images, indices, skipped = [], [], []
    for i in range(start, stop):
        try:
            images.append(loaders[i]())
            indices.append(i)
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three on corrupt files
            skipped.append((i, f"{type(err).__name__}: {err}"))
    pixels = processor(images=images)["pixel_values"] if images else None
    return pixels, indices, skipped


class NoReadableImages(ValueError):
    """encode_images got no image it could read (or no image at all); `skipped` lists (index, reason)."""

    def __init__(self, skipped: list[tuple[int, str]]):
        super().__init__("No features to concatenate: every item was skipped or the input was empty.")
        self.skipped = skipped


@torch.no_grad()
def encode_images(
    model,
    processor,
    loaders: Sequence[ImageLoader],
    batch_size: int = 64,
    desc: str = "images",
    progress: bool = True,
    keep_tokens: bool | None = None,
) -> tuple[WukongImageFeatures, list[int], list[tuple[int, str]]]:
    """Encode images once each.

    Args:
        model: a WukongModel (eval mode), or any encoder with its `encode_image`, `config` and
            `similarity_rule` (e.g. wukong_hf.onnx_encoder.OnnxEncoder). processor: its WukongProcessor.
        loaders: one zero-argument callable per image returning a PIL image (lazy, so memory
            holds two batches of pixels at a time: the one encoded and the one being read).
        progress: show a tqdm bar.
        keep_tokens: keep token features (default: when the model's similarity rule reads them).

    Returns:
        (features of the readable images in input order, their input indices,
         [(index, reason)] for every image that could not be read).
    """
    device = model_device(model)
    banks, kept, skipped = [], [], []
    starts = list(range(0, len(loaders), batch_size))
    bar = tqdm(total=len(loaders), desc=f"encoding {desc}", unit="img", disable=not progress)
    # One reader thread: it prepares batch k+1 while the tower runs on batch k.
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(_load_batch, loaders, 0, min(batch_size, len(loaders)), processor) if starts else None
        for n, start in enumerate(starts):
            pixels, indices, failed = pending.result()
            stop = min(start + batch_size, len(loaders))
            if n + 1 < len(starts):
                pending = reader.submit(_load_batch, loaders, stop, min(stop + batch_size, len(loaders)), processor)
            skipped.extend(failed)
            if pixels is not None:
                banks.append(_kept(model.encode_image(pixels.to(device)), model, keep_tokens))
                kept.extend(indices)
            bar.update(stop - start)
    bar.close()
    if skipped:
        logger.warning("skipped %d unreadable image(s), first: %s", len(skipped), skipped[0])
    if not banks:
        raise NoReadableImages(skipped)
    return WukongImageFeatures.concat(banks), kept, skipped


@torch.no_grad()
def encode_texts(
    model,
    processor,
    texts: Sequence[str],
    batch_size: int = 256,
    desc: str = "texts",
    progress: bool = True,
    sort_by_length: bool = True,
    keep_tokens: bool | None = None,
) -> WukongTextFeatures:
    """Encode texts once each (over-long texts are truncated to the model's length).

    Args:
        model: a WukongModel (eval mode) or an encoder with `encode_text`, `config`, `similarity_rule`.
        processor: its WukongProcessor. texts: N strings.
        sort_by_length: batch texts of similar length together (fewer padded positions); the
            features come back in input order either way.
        keep_tokens: keep token features (default: when the model's similarity rule reads them).

    Returns:
        Features of len(texts) in input order; token features (token-wise models) have as many
        positions as the longest text of the set.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("No texts to encode: pass at least one text.")
    device = model_device(model)
    pad_id = processor.tokenizer.pad_token_id or 0
    token_ids = processor(text=texts, padding=False, return_tensors=None)["input_ids"]
    lengths = torch.tensor([len(ids) for ids in token_ids])
    order = torch.sort(lengths, descending=True, stable=True).indices if sort_by_length else torch.arange(len(texts))
    longest = int(lengths.max())
    banks = []
    for start in tqdm(range(0, len(texts), batch_size), desc=f"encoding {desc}", unit="batch", disable=not progress):
        rows = order[start : start + batch_size].tolist()
        width = int(lengths[rows].max())
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            input_ids[r, : lengths[i]] = torch.as_tensor(token_ids[i])
            attention_mask[r, : lengths[i]] = 1
        features = model.encode_text(input_ids.to(device), attention_mask.to(device))
        banks.append(pad_text_tokens(_kept(features, model, keep_tokens), longest))
    features = WukongTextFeatures.concat(banks)
    if sort_by_length:
        features = features.select(torch.argsort(order))
    return features
