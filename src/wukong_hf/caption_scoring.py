"""Score Chinese captions against images: P(caption | image) for every image (what `wukong score` prints)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["score_captions", "open_image_files"]


def score_captions(model, processor, images, captions: list[str]) -> list[list[float]]:
    """Softmax over captions for each image.

    Args:
        model: a WukongModel (eval mode). processor: its WukongProcessor.
        images: N PIL images (any mode; the processor converts to RGB). captions: M non-empty strings.

    Returns:
        N lists of M probabilities (each list sums to 1), in the order of `images` and `captions`.
    """
    import torch

    inputs = processor(text=captions, images=images)
    with torch.no_grad():
        out = model(**inputs)
    return out.logits_per_image.softmax(dim=-1).tolist()


def open_image_files(paths: Sequence[str | Path]) -> list:
    """The images at `paths`, fully decoded (PIL), so a corrupt file fails here, naming the file.

    Raises FileNotFoundError for a missing file and ValueError for one PIL cannot read.
    """
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"image file {path} does not exist; pass existing PNG or JPEG files.")
        try:
            image = Image.open(path)
            image.load()  # decoding is lazy: a truncated file only fails here
        except (UnidentifiedImageError, OSError, SyntaxError) as err:  # PIL raises SyntaxError for some broken PNGs
            raise ValueError(f"cannot read {path} as an image ({err}); pass a PNG or JPEG file.") from err
        images.append(image)
    return images
