"""`wukong eval zero-shot`, `wukong eval retrieval`, `wukong eval make-dataset`: parse arguments, call the library."""

from __future__ import annotations

import json

__all__ = ["register", "load_model_and_processor"]


def load_model_and_processor(model: str | None, preset: str):
    """A saved model folder / Hub id, or a randomly initialised preset (for smoke runs)."""
    from transformers import AutoModel, AutoProcessor

    from .. import WukongModel, WukongProcessor, preset_config

    if model:
        return AutoModel.from_pretrained(model).eval(), AutoProcessor.from_pretrained(model)
    config = preset_config(preset)
    return WukongModel(config).eval(), WukongProcessor.from_config(config)


def _finish(result: dict, args) -> int:
    from .report import write_report

    result["model"] = args.model or f"{args.preset} (random init)"
    paths = write_report(result, args.output)
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


def _cmd_zero_shot(args) -> int:
    from .image_sources import hf_dataset_images, image_folder_images, imagenet_val_images
    from .prompts import load_classnames, load_templates
    from .text_feature_cache import default_text_cache_dir
    from .zero_shot import zero_shot_classification

    if args.image_folder:
        images = image_folder_images(args.image_folder)
    elif args.imagenet_val:
        if not args.imagenet_labels:
            raise ValueError("--imagenet-val needs --imagenet-labels FILE (lines 'FILENAME LABEL_INDEX').")
        images = imagenet_val_images(args.imagenet_val, args.imagenet_labels)
    else:
        images = hf_dataset_images(args.dataset, args.split, args.image_column, args.label_column)
    if args.classnames:
        classnames = load_classnames(args.classnames)
    elif images.folder_classes:
        classnames = images.folder_classes
    else:
        raise ValueError("The images carry no class names; pass --classnames imagenet1k or a file with one name per line.")
    model, processor = load_model_and_processor(args.model, args.preset)
    result = zero_shot_classification(
        model,
        processor,
        images,
        classnames,
        load_templates(args.templates),
        ensemble=args.ensemble,
        batch_size=args.batch_size,
        dataset_name=args.dataset_name,
        split=args.split,
        text_cache=None if args.no_text_cache else (args.text_cache or default_text_cache_dir()),
    )
    return _finish(result, args)


def _read_set(args):
    from .retrieval_sets import read_retrieval_set

    return read_retrieval_set(args.format, args.data, args.split, args.images, args.split_file, args.name, args.strict)


def _cmd_retrieval(args) -> int:
    from .retrieval import evaluate_retrieval

    from .embeddings import load_embeddings

    dataset = _read_set(args)
    images = load_embeddings(args.image_features) if args.image_features else None
    texts = load_embeddings(args.text_features) if args.text_features else None
    if images and texts and not args.model:  # both sides from files: no model to load
        model, processor = None, None
        args.model = images.metadata.get("model") or args.image_features
    else:
        model, processor = load_model_and_processor(args.model, args.preset)
    result = evaluate_retrieval(model, processor, dataset, batch_size=args.batch_size, shortlist=args.shortlist,
                                image_embeddings=images, text_embeddings=texts)
    return _finish(result, args)


def _cmd_make_dataset(args) -> int:
    from .retrieval_sets import write_retrieval_dataset

    dataset = _read_set(args)
    folder = write_retrieval_dataset(dataset, args.output)
    print(f"wrote {len(dataset.image_ids)} images, {len(dataset.texts)} texts, {len(dataset.skipped)} skipped rows to {folder}")
    return 0


def _add_model_args(p) -> None:
    p.add_argument("--model", help="model folder or Hub id (default: a randomly initialised --preset, for smoke runs)")
    p.add_argument("--preset", default="tiny-token-wise", help="preset name when --model is not given")
    p.add_argument("--batch-size", type=int, default=64, help="images per tower batch")
    p.add_argument("--output", required=True, help="folder for results.json (with model_index) and results.md")


def _add_set_args(p) -> None:
    from .retrieval_sets import RETRIEVAL_FORMATS

    p.add_argument("--format", choices=RETRIEVAL_FORMATS, default="chinese-clip", help="input format of --data")
    p.add_argument("--data", required=True, help="Chinese-CLIP folder, captions file, AIC-ICC JSON, or dataset folder / Hub id")
    p.add_argument("--images", help="image folder (hash-captions, aic-icc)")
    p.add_argument("--split-file", help="hash-captions: image names of the split, one per line")
    p.add_argument("--split", help="split name (chinese-clip default valid, dataset default test)")
    p.add_argument("--name", help="dataset name in reports (e.g. muge, flickr30k-cn, coco-cn); 'muge' means text-to-image only")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row instead of skipping and counting it")


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="zero-shot classification and image-text retrieval evaluation")
    sub = p.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND", required=True)

    z = sub.add_parser("zero-shot", help="zero-shot classification: single prompt and template ensemble")
    _add_model_args(z)
    source = z.add_mutually_exclusive_group(required=True)
    source.add_argument("--image-folder", help="ImageFolder tree root/<class>/<image>")
    source.add_argument("--imagenet-val", help="flat ImageNet validation folder (with --imagenet-labels)")
    source.add_argument("--dataset", help="datasets folder or Hub id with image and label columns")
    z.add_argument("--imagenet-labels", help="lines 'FILENAME LABEL_INDEX' (0-based, standard ImageNet order)")
    z.add_argument("--split", default="test", help="dataset split")
    z.add_argument("--image-column", default="image")
    z.add_argument("--label-column", default="label")
    z.add_argument("--classnames", help="'imagenet1k' or a file with one Chinese class name per line, in label order")
    z.add_argument("--templates", default="imagenet1k", help="'imagenet1k' (80 Chinese templates), 'none', or a file with {c} slots")
    z.add_argument("--ensemble", choices=("embedding", "similarity", "probability"), help="default: embedding (global), similarity (token-wise)")
    z.add_argument("--dataset-name", default="custom", help="dataset name in reports (e.g. imagenet1k-cn)")
    z.add_argument("--text-cache", help="folder of cached prompt features (default: $WUKONG_HF_TEXT_CACHE or ~/.cache/wukong_hf/text_features)")
    z.add_argument("--no-text-cache", action="store_true", help="encode every prompt, read and write no cache")
    z.set_defaults(func=_cmd_zero_shot)

    r = sub.add_parser("retrieval", help="image-text retrieval R@1/5/10 and MR")
    _add_model_args(r)
    _add_set_args(r)
    r.add_argument("--shortlist", type=int, help="token-wise models: re-rank the global top-K instead of exact scoring")
    r.add_argument("--image-features", help="features file from `wukong embed images` (looked up by image id, not encoded)")
    r.add_argument("--text-features", help="features file from `wukong embed texts` (looked up by text id, not encoded)")
    r.set_defaults(func=_cmd_retrieval)

    m = sub.add_parser("make-dataset", help="convert a retrieval set into a dataset repository folder (Parquet + card)")
    _add_set_args(m)
    m.add_argument("--output", required=True, help="output folder (load it with datasets.load_dataset(folder))")
    m.set_defaults(func=_cmd_make_dataset)
