"""Built-in synthetic Chinese image-text set: coloured shapes on plain, noisy backgrounds.

Generated in code, nothing shipped or downloaded. Each example is one shape (圆 circle, 方块
square, 三角 triangle, 十字 cross) in one of five colours (红 绿 蓝 黄 紫), at a random position and
size, on a noisy background of one of four colours no object has, named as a scene: 雪地 (snow,
white), 夜空 (night sky, black), 水泥地 (cement, grey), 木桌 (wooden table, brown). Its caption names
the object and, in half the phrasings, the background ("雪地上的一个红三角", "一个红三角", ...: six
phrasings); its label is the colour-shape combination ("红三角"); its pixel mask is kept.

No character is shared by every label, or by every caption: a character that every caption has
(as 色 and 形 in "红色圆形") gives background patches a label token to match that costs the
contrastive loss nothing, and then word-patch alignment highlights the background (docs/demo.md).

Held-out colour-shape combinations never occur in the "train" split; the "held_out" split holds
only them, so zero-shot classification on it measures compositional generalisation.
Example i of a split depends only on (seed, split, i): asking for more examples never changes
the earlier ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "OBJECT_COLOURS",
    "BACKGROUND_COLOURS",
    "SHAPES",
    "CAPTION_TEMPLATES",
    "SPLITS",
    "SyntheticExample",
    "SyntheticShapes",
]

# Chinese colour name -> nominal RGB. Object colours are far apart so a 48 px patch tells them apart.
OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "红": (220, 40, 40),
    "绿": (40, 170, 60),
    "蓝": (40, 80, 220),
    "黄": (240, 210, 40),
    "紫": (150, 60, 190),
}
# Backgrounds: colours no object has, so "the red thing" is always the object, never the backdrop.
# Named as scenes, not as colours: a colour word for the background would sit next to the object's
# colour word in the text tower, and background patches would then take the label's colour word.
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "雪地": (240, 240, 240),
    "夜空": (20, 20, 20),
    "水泥地": (128, 128, 128),
    "木桌": (120, 80, 40),
}
SHAPES: tuple[str, ...] = ("圆", "方块", "三角", "十字")
# Half the phrasings name the background, half do not, as real captions often leave it out.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "一个{colour}{shape}",
    "图片里有一个{colour}{shape}",
    "{colour}{shape}",
    "{background}上的一个{colour}{shape}",
    "{colour}{shape}在{background}上",
    "{background}上有个{colour}{shape}",
)
SPLITS: tuple[str, ...] = ("train", "held_out")
COLOUR_JITTER = 12  # per-channel shift of a whole object or background, so colours vary a little
PIXEL_NOISE = 8  # per-pixel noise on the background, so it is not a flat field
MIN_SIDE, MAX_SIDE = 0.4, 0.7  # side of the shape's box as a fraction of the image side


@dataclass
class SyntheticExample:
    """One generated example.

    image: RGB PIL image (S, S). mask: (S, S) bool numpy array, True on the object's pixels.
    label: colour + shape ("红三角"); caption: a Chinese sentence naming the object and, when
    names_background is True, the background.
    """

    image: Image.Image
    mask: np.ndarray
    caption: str
    label: str
    colour: str
    shape: str
    background: str
    names_background: bool = True


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    """Draw `shape` filling the square `box` = (x0, y0, x1, y1) (inclusive) with `fill`."""
    x0, y0, x1, y1 = box
    if shape == "圆":
        draw.ellipse(box, fill=fill)
    elif shape == "方块":
        draw.rectangle(box, fill=fill)
    elif shape == "三角":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "十字":
        third = (x1 - x0) / 3
        draw.rectangle((x0 + third, y0, x1 - third, y1), fill=fill)
        draw.rectangle((x0, y0 + third, x1, y1 - third), fill=fill)
    else:
        raise ValueError(f"Unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}.")


class SyntheticShapes:
    """Generator of the synthetic set with a fixed train / held-out split of colour-shape combinations.

    Args:
        image_size: side of the square images in pixels (at least 16).
        seed: drives the held-out choice and every example.
        num_held_out: how many colour-shape combinations only the "held_out" split contains; the
            default picks one per shape, each with a different colour, so every colour and every
            shape still occurs in training.
    """

    def __init__(self, image_size: int = 48, seed: int = 0, num_held_out: int = len(SHAPES)):
        if image_size < 16:
            raise ValueError(f"image_size={image_size} is too small to draw a recognisable shape; use at least 16.")
        max_held_out = min(len(SHAPES), len(OBJECT_COLOURS))
        if not 1 <= num_held_out <= max_held_out:
            raise ValueError(
                f"num_held_out={num_held_out} must be between 1 and {max_held_out}, so that every colour and "
                "every shape still appears in the training split."
            )
        self.image_size = image_size
        self.seed = seed
        colours = list(OBJECT_COLOURS)
        order = np.random.default_rng([seed, 7919]).permutation(len(colours))
        # One combination per shape, each with a different colour: a partial Latin diagonal.
        self.held_out_combinations: list[tuple[str, str]] = [
            (colours[order[i]], SHAPES[i]) for i in range(num_held_out)
        ]
        self.combinations: list[tuple[str, str]] = [(c, s) for c in colours for s in SHAPES]
        self.train_combinations: list[tuple[str, str]] = [
            combo for combo in self.combinations if combo not in self.held_out_combinations
        ]

    @property
    def labels(self) -> list[str]:
        """Every colour-shape label ("红圆", "红方块", ...), in the order of `combinations` (ClassLabel ids)."""
        return [colour + shape for colour, shape in self.combinations]

    @property
    def held_out_labels(self) -> list[str]:
        return [colour + shape for colour, shape in self.held_out_combinations]

    def split_combinations(self, split: str) -> list[tuple[str, str]]:
        if split == "train":
            return self.train_combinations
        if split == "held_out":
            return self.held_out_combinations
        raise ValueError(f"Unknown split {split!r}; the synthetic set has splits {', '.join(SPLITS)}.")

    def example(self, split: str, index: int) -> SyntheticExample:
        """Example `index` of `split`, the same for the same (seed, split, index) every time."""
        combos = self.split_combinations(split)
        rng = np.random.default_rng([self.seed, SPLITS.index(split), index])
        colour, shape = combos[int(rng.integers(len(combos)))]
        background = str(rng.choice(list(BACKGROUND_COLOURS)))
        template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]

        size = self.image_size
        bg_rgb = np.array(BACKGROUND_COLOURS[background]) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3)
        pixels = bg_rgb + rng.integers(-PIXEL_NOISE, PIXEL_NOISE + 1, (size, size, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")

        side = int(rng.integers(int(MIN_SIDE * size), int(MAX_SIDE * size) + 1))
        x0 = int(rng.integers(0, size - side + 1))
        y0 = int(rng.integers(0, size - side + 1))
        box = (x0, y0, x0 + side - 1, y0 + side - 1)
        fill = np.clip(np.array(OBJECT_COLOURS[colour]) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255)
        _draw_shape(ImageDraw.Draw(image), shape, box, tuple(int(v) for v in fill))
        mask_image = Image.new("L", (size, size), 0)
        _draw_shape(ImageDraw.Draw(mask_image), shape, box, 255)

        caption = template.format(colour=colour, shape=shape, background=background)
        return SyntheticExample(
            image=image,
            mask=np.asarray(mask_image) > 0,
            caption=caption,
            label=colour + shape,
            colour=colour,
            shape=shape,
            background=str(background),
            names_background="{background}" in template,
        )

    def examples(self, split: str, num_examples: int, progress: bool = False) -> list[SyntheticExample]:
        """The first `num_examples` examples of `split` (progress: show a tqdm bar)."""
        if num_examples < 1:
            raise ValueError(f"num_examples must be at least 1, got {num_examples}.")
        from tqdm.auto import tqdm

        indices = tqdm(range(num_examples), desc=f"generating {split}", unit="img", disable=not progress)
        return [self.example(split, i) for i in indices]

    def to_dataset(self, split: str = "train", num_examples: int = 1000, progress: bool = False):
        """A datasets.Dataset of the first `num_examples` examples of `split`.

        Columns: image (Image), caption (str), label (ClassLabel over `labels`), mask (Image, mode
        "L", 255 on the object), colour, shape, background (str), names_background (bool: whether
        the caption names the background).
        """
        import datasets

        features = datasets.Features(
            {
                "image": datasets.Image(),
                "caption": datasets.Value("string"),
                "label": datasets.ClassLabel(names=self.labels),
                "mask": datasets.Image(),
                "colour": datasets.Value("string"),
                "shape": datasets.Value("string"),
                "background": datasets.Value("string"),
                "names_background": datasets.Value("bool"),
            }
        )
        label_ids = {label: i for i, label in enumerate(self.labels)}

        def rows():
            for ex in self.examples(split, num_examples, progress=progress):
                yield {
                    "image": ex.image,
                    "caption": ex.caption,
                    "label": label_ids[ex.label],
                    "mask": Image.fromarray(ex.mask.astype(np.uint8) * 255, "L"),
                    "colour": ex.colour,
                    "shape": ex.shape,
                    "background": ex.background,
                    "names_background": ex.names_background,
                }

        return datasets.Dataset.from_list(list(rows()), features=features)
