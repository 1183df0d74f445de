"""`wukong presets` and `wukong score`: parse arguments, call the library (presets, model_folders, caption_scoring)."""

from __future__ import annotations

import json

__all__ = ["register"]


def _cmd_presets(args) -> int:
    from .presets import list_presets, preset_description

    for name in list_presets():
        print(f"{name:30s} {preset_description(name)}")
    return 0


def _cmd_score(args) -> int:
    from .caption_scoring import open_image_files, score_captions
    from .model_folders import load_model_and_processor

    images = open_image_files(args.images)  # before the model: a bad image fails fast
    model, processor = load_model_and_processor(args.model, args.preset)
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
