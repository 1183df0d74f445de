"""Word-patch alignment (paper Figure 4): which text token each image patch matches best.

For a token-wise model, every image patch embedding is compared with the token embeddings of
"[CLS] label [SEP]"; a patch whose most similar token is one of the label's own tokens is
highlighted. `draw_alignment` paints that grid over the image (PNG-ready PIL image);
`alignment_grid` tiles several; `mask_share` scores it against an object mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "WordPatchAlignment",
    "word_patch_alignment",
    "word_patch_alignments",
    "highlight_mask",
    "mask_share",
    "background_tokens",
    "token_role",
    "draw_alignment",
    "alignment_grid",
]

HIGHLIGHT = (255, 215, 0)  # label-token patches
OBJECT_OUTLINE = (0, 230, 255)  # the object's true mask, when known
MIN_CELL_FOR_NUMBERS = 12  # pixels: smaller cells get no token-index numbers


@dataclass
class WordPatchAlignment:
    """The alignment of one image with one label.

    tokens: the text tokens, "[CLS]", label pieces..., "[SEP]" (T of them).
    label_tokens: indices into `tokens` of the label's own pieces (1 .. T-2).
    token_index: (H, W) long, for each patch the index of its most similar token.
    similarity: (H, W, T) float, cosine similarity of each patch with each token.
    crop_box: (left, top, right, bottom) of the square region of the original image that the
        model saw (the processor resizes the short side and centre-crops).
    image_size: (width, height) of the original image.
    """

    tokens: list[str]
    label_tokens: list[int]
    token_index: torch.Tensor
    similarity: torch.Tensor
    crop_box: tuple[float, float, float, float]
    image_size: tuple[int, int]

    @property
    def highlighted(self) -> torch.Tensor:
        """(H, W) bool: patches whose most similar token is a label token."""
        return torch.isin(self.token_index, torch.tensor(self.label_tokens, dtype=self.token_index.dtype))

    def legend(self) -> str:
        """'0=[CLS] 1=蜻 2=蜓 3=[SEP]' with label tokens marked by '*'."""
        return " ".join(f"{i}={t}{'*' if i in self.label_tokens else ''}" for i, t in enumerate(self.tokens))


def _check_token_wise(model) -> None:
    config = model.config
    if not model.similarity_rule.uses_tokens:
        raise ValueError(
            f"Word-patch alignment needs a token-wise model (config.similarity='token_wise'), but this model has a "
            f"{getattr(config, 'similarity', 'unknown')!r} head: its patch tokens are never trained to match words. "
            "Use a token-wise (FILIP) model, e.g. one trained by `wukong demo --similarity token_wise` or a "
            "*-token-wise / *-filip preset."
        )
    if getattr(model, "token_reduction", None) is not None:
        raise ValueError(
            f"This model reduces its patches to {config.num_reduced_tokens} learned tokens, which have no place in the "
            "image; word-patch alignment needs a token-wise model without token reduction (num_reduced_tokens=None)."
        )


def _crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


@torch.no_grad()
def word_patch_alignments(model, processor, images: list[Image.Image], labels: list[str]) -> list[WordPatchAlignment]:
    """Alignment of each image with its label (one label per image), in one batch.

    Args:
        model: a token-wise WukongModel without token reduction. processor: its WukongProcessor.
        images: PIL images (any size; the processor resizes and centre-crops).
        labels: one label per image, e.g. "蜻蜓".

    Returns:
        One WordPatchAlignment per image.
    """
    _check_token_wise(model)
    if len(images) != len(labels):
        raise ValueError(f"Got {len(images)} images but {len(labels)} labels; give one label per image.")
    for label in labels:
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"Every label needs at least one character, got {label!r}.")
    images = [image.convert("RGB") for image in images]
    inputs = processor(text=labels, images=images)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    image_features = model.encode_image(inputs["pixel_values"].to(device))
    text_features = model.encode_text(inputs["input_ids"].to(device), inputs["attention_mask"].to(device))
    model.train(was_training)
    patches = image_features.patch_embeds().float().cpu()  # (B, H, W, D) on the image's patch grid
    rows, cols = patches.shape[1:3]
    if rows == 1 and cols > 1:
        raise ValueError(f"The image tower gives {cols} patch tokens, not a square grid; cannot draw them.")
    results = []
    for b, (image, label) in enumerate(zip(images, labels)):
        length = int(inputs["attention_mask"][b].sum())
        ids = inputs["input_ids"][b, :length].tolist()
        text = text_features.token_embeds[b, :length].float().cpu()  # (T, D)
        similarity = patches[b] @ text.t()  # (H, W, T)
        results.append(
            WordPatchAlignment(
                tokens=processor.tokenizer.convert_ids_to_tokens(ids),
                label_tokens=list(range(1, length - 1)),
                token_index=similarity.argmax(dim=-1),
                similarity=similarity,
                crop_box=_crop_box(*image.size),
                image_size=image.size,
            )
        )
    return results


def word_patch_alignment(model, processor, image: Image.Image, label: str) -> WordPatchAlignment:
    """Alignment of one image with "[CLS] label [SEP]" (see word_patch_alignments)."""
    return word_patch_alignments(model, processor, [image], [label])[0]


def _cells(alignment: WordPatchAlignment, scale: float = 1.0):
    """Yield (row, col, (x0, y0, x1, y1)) of every patch in output-image pixels."""
    left, top, right, bottom = (v * scale for v in alignment.crop_box)
    rows, cols = alignment.token_index.shape
    for r in range(rows):
        for c in range(cols):
            x0 = left + (right - left) * c / cols
            y0 = top + (bottom - top) * r / rows
            x1 = left + (right - left) * (c + 1) / cols
            y1 = top + (bottom - top) * (r + 1) / rows
            yield r, c, (x0, y0, x1, y1)


def highlight_mask(alignment: WordPatchAlignment, tokens: list[int] | None = None) -> np.ndarray:
    """(height, width) bool over the original image: True on pixels of highlighted patches.

    tokens: count patches whose best token is one of these indices instead (default: the label tokens).
    """
    width, height = alignment.image_size
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    highlighted = alignment.highlighted if tokens is None else torch.isin(alignment.token_index, torch.tensor(tokens))
    for r, c, (x0, y0, x1, y1) in _cells(alignment):
        if highlighted[r, c]:
            draw.rectangle((round(x0), round(y0), round(x1) - 1, round(y1) - 1), fill=255)
    return np.asarray(canvas) > 0


def _check_object_mask(alignment: WordPatchAlignment, object_mask: np.ndarray) -> None:
    width, height = alignment.image_size
    if object_mask.shape != (height, width):
        raise ValueError(f"object_mask has shape {object_mask.shape}, the image is {(height, width)} (height, width).")


def mask_share(alignment: WordPatchAlignment, object_mask: np.ndarray, tokens: list[int] | None = None) -> tuple[int, int]:
    """(highlighted pixels on the object, highlighted pixels) for a (height, width) bool object mask.

    Their ratio is the share of the label-token area that lies on the object; compare it with
    the object's area fraction, which is what randomly placed highlights would score.
    tokens: as in highlight_mask (default: all label tokens).
    """
    _check_object_mask(alignment, object_mask)
    highlight = highlight_mask(alignment, tokens)
    return int((highlight & object_mask).sum()), int(highlight.sum())


def token_role(alignment: WordPatchAlignment, index: int) -> str:
    """"[CLS]", "[SEP]" or "label k" (k = 1 for the label's first piece) for a token index."""
    if index == 0:
        return "[CLS]"
    if index == len(alignment.tokens) - 1:
        return "[SEP]"
    return f"label {index}"


def background_tokens(alignment: WordPatchAlignment, object_mask: np.ndarray) -> dict[str, int]:
    """How many background patches (no object pixel inside) take each token role as their best token.

    Roles as in token_role. Figure 4 looks right when background patches take [CLS] or [SEP];
    a label role here is what pulls the alignment share down.
    """
    _check_object_mask(alignment, object_mask)
    counts: dict[str, int] = {}
    for r, c, (x0, y0, x1, y1) in _cells(alignment):
        cell = object_mask[max(0, round(y0)):round(y1), max(0, round(x0)):round(x1)]
        if cell.size and not cell.any():
            role = token_role(alignment, int(alignment.token_index[r, c]))
            counts[role] = counts.get(role, 0) + 1
    return counts


def _font(size: int):
    try:
        return ImageFont.load_default(size=max(size, 6))
    except TypeError:  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def draw_alignment(
    image: Image.Image, alignment: WordPatchAlignment, scale: float = 1.0, object_mask: np.ndarray | None = None
) -> Image.Image:
    """The image with label-token patches highlighted, others dimmed, token indices written in.

    Args:
        image: the original image. alignment: from word_patch_alignment on that image.
        scale: output size factor (1: exactly the image's size; >1 enlarges with nearest-neighbour
            so patch numbers stay readable).
        object_mask: optional (height, width) bool mask of the object, outlined in cyan.

    Returns:
        RGB PIL image of size (round(width * scale), round(height * scale)).
    """
    width, height = image.size
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    base = image.convert("RGB").resize(size, Image.NEAREST).convert("RGBA")
    overlay = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    left, top, right, bottom = (v * scale for v in alignment.crop_box)
    # Parts of the image the model never saw (outside the centre crop) are greyed out.
    for box in ((0, 0, size[0], top), (0, bottom, size[0], size[1]), (0, top, left, bottom), (right, top, size[0], bottom)):
        if box[2] > box[0] and box[3] > box[1]:
            draw.rectangle(box, fill=(60, 60, 60, 170))
    highlighted = alignment.highlighted
    cell = (right - left) / alignment.token_index.shape[1]
    font = _font(int(cell * 0.5)) if cell >= MIN_CELL_FOR_NUMBERS else None
    for r, c, (x0, y0, x1, y1) in _cells(alignment, scale):
        on = bool(highlighted[r, c])
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(*HIGHLIGHT, 110) if on else (0, 0, 0, 110),
                       outline=(*HIGHLIGHT, 255) if on else None)
        if font is not None:
            text = str(int(alignment.token_index[r, c]))
            colour = (0, 0, 0, 255) if on else (255, 255, 255, 200)
            draw.text(((x0 + x1) / 2, (y0 + y1) / 2), text, fill=colour, font=font, anchor="mm")
    out = Image.alpha_composite(base, overlay).convert("RGB")
    if object_mask is not None:
        mask_image = Image.fromarray(object_mask.astype(np.uint8) * 255, "L").resize(size, Image.NEAREST)
        edges = np.asarray(mask_image) > 0
        border = edges & ~(np.roll(edges, 1, 0) & np.roll(edges, -1, 0) & np.roll(edges, 1, 1) & np.roll(edges, -1, 1))
        pixels = np.asarray(out).copy()
        pixels[border] = OBJECT_OUTLINE
        out = Image.fromarray(pixels, "RGB")
    return out


def alignment_grid(panels: list[Image.Image], titles: list[str] | None = None, columns: int = 4) -> Image.Image:
    """Tile drawn alignments (same size each) into one image, with an ASCII title under each panel.

    The default font has no CJK glyphs, so titles should be ASCII (token legends go to the console
    and to the demo's JSON report).
    """
    if not panels:
        raise ValueError("alignment_grid needs at least one panel.")
    width, height = panels[0].size
    strip = 16 if titles else 0
    columns = max(1, min(columns, len(panels)))
    rows = -(-len(panels) // columns)
    pad = 4
    grid = Image.new("RGB", (columns * (width + pad) + pad, rows * (height + strip + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = _font(11)
    for i, panel in enumerate(panels):
        x = pad + (i % columns) * (width + pad)
        y = pad + (i // columns) * (height + strip + pad)
        grid.paste(panel.resize((width, height)), (x, y))
        if titles:
            draw.text((x + 2, y + height + 2), titles[i], fill=(0, 0, 0), font=font)
    return grid
