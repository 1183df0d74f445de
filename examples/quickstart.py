"""Build a tiny Wukong model (both heads), score Chinese captions against generated images, print the table.

    python examples/quickstart.py

No download: the model is randomly initialised from a bundled preset, so the scores are those of an
untrained model. Use `wukong demo` to train one, or AutoModel.from_pretrained(<converted folder>) for real weights.
"""

import numpy as np
from PIL import Image, ImageDraw

from wukong_hf import WukongModel, WukongProcessor, preset_config
from wukong_hf.caption_scoring import score_captions


def draw(shape: str, colour: str, background: str) -> Image.Image:
    image = Image.new("RGB", (96, 96), background)
    pen = ImageDraw.Draw(image)
    box = (24, 24, 72, 72)
    pen.ellipse(box, fill=colour) if shape == "circle" else pen.rectangle(box, fill=colour)
    return image


def main() -> None:
    images = {"red circle on blue": draw("circle", "red", "blue"), "green square on white": draw("square", "green", "white")}
    captions = ["蓝色背景上的一个红色圆形", "白色背景上的一个绿色方形", "一只猫"]
    for preset in ("tiny-global", "tiny-token-wise"):
        config = preset_config(preset)
        model, processor = WukongModel(config).eval(), WukongProcessor.from_config(config)
        probs = np.array(score_captions(model, processor, list(images.values()), captions))
        print(f"\n{preset} ({config.similarity} similarity, untrained): P(caption | image)")
        print(f"{'':24s}" + "".join(f"{c:>16s}" for c in captions))
        for name, row in zip(images, probs):
            print(f"{name:24s}" + "".join(f"{p:16.3f}" for p in row))


if __name__ == "__main__":
    main()
