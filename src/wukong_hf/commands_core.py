"""`wukong presets` and `wukong score`: list the bundled configurations, score captions against images."""

from __future__ import annotations

import json

__all__ = ["register", "score_captions"]


def score_captions(model, processor, images, captions: list[str]) -> list[list[float]]:
    """Softmax over captions for each image: probabilities (images x captions) as nested lists."""
    import torch

    inputs = processor(text=captions, images=images)
    with torch.no_grad():
        out = model(**inputs)
    return out.logits_per_image.softmax(dim=-1).tolist()


def _cmd_presets(args) -> int:
    from .presets import list_presets, preset_description

    for name in list_presets():
        print(f"{name:30s} {preset_description(name)}")
    return 0


def _cmd_score(args) -> int:
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    from . import WukongModel, WukongProcessor, preset_config

    if args.model:
        model = AutoModel.from_pretrained(args.model).eval()
        processor = AutoProcessor.from_pretrained(args.model)
    else:
        config = preset_config(args.preset)
        model = WukongModel(config).eval()
        processor = WukongProcessor.from_config(config)
    images = [Image.open(path) for path in args.images]
    probs = score_captions(model, processor, images, args.captions)
    result = {path: dict(zip(args.captions, row)) for path, row in zip(args.images, probs)}
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("presets", help="list the bundled model configurations (paper, released, tiny)")
    p.set_defaults(func=_cmd_presets)
    p = subparsers.add_parser("score", help="score Chinese captions against images with a model")
    p.add_argument("--model", help="model folder or Hub id (default: a randomly initialised --preset)")
    p.add_argument("--preset", default="tiny-token-wise", help="preset name when --model is not given")
    p.add_argument("--images", nargs="+", required=True, help="image files")
    p.add_argument("--captions", nargs="+", required=True, help="Chinese captions")
    p.set_defaults(func=_cmd_score)
