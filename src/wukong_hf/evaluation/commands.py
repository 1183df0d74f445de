"""`wukong eval zero-shot`, `wukong eval retrieval`, `wukong eval make-dataset`, `wukong eval push-results`:
parse arguments, call the library."""

from __future__ import annotations

import json
from pathlib import Path

from ..cli import add_output_argument
from ..model_folders import load_model_and_processor  # the one loader: model folder, Hub id or preset

__all__ = ["register"]


def _check_outputs(args, task: str) -> None:
    """Refuse impossible output options before any model is loaded or image encoded."""
    from ..hub import _valid_repo_id

    if task == "zero-shot-classification" and "chinese-clip" in (args.results_format or ()):
        raise ValueError("--results-format chinese-clip: Chinese-CLIP's evaluation output is a retrieval schema "
                         "(cn_clip/eval/evaluation.py); for zero-shot use --results-format clip_benchmark.")
    if args.dry_run and not args.push_results:
        raise ValueError("--dry-run DIR writes the card --push-results would upload; add --push-results ORG/NAME.")
    if args.push_results:
        _valid_repo_id(args.push_results)


def _run_config(args, similarity: str, **task_config) -> dict:
    """The run's configuration for results.json: what was evaluated, on what, and how."""
    import importlib.metadata

    from .metrics import TIE_RULE, load_metric
    from .report import model_provenance

    metric = load_metric("wukong_zero_shot" if "templates" in task_config else "wukong_retrieval")
    return {
        "model": model_provenance(args.model, None if args.model else args.preset),
        "similarity": similarity,
        **task_config,
        "batch_size": args.batch_size,
        "tie_rule": TIE_RULE,
        "metric_module": {"name": metric.name, "hash": getattr(metric, "_hash", None)},
        "wukong_hf_version": importlib.metadata.version("wukong-hf"),
    }


def _finish(result: dict, args, config: dict) -> int:
    from .report import write_report

    result["model"] = args.model or f"{args.preset} (random init)"
    result["config"] = config
    paths = write_report(result, args.out, formats=args.results_format or ())
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(json.dumps({k: str(v) for k, v in paths.items()}, ensure_ascii=False))
    if args.push_results:
        from ..hub import push_eval_results

        saved = json.loads(paths["json"].read_text(encoding="utf-8"))
        try:
            where = push_eval_results(args.push_results, entries=saved["model_index"], dry_run_dir=args.dry_run)
        except (ValueError, OSError) as err:
            raise ValueError(f"{err} The results are saved in {paths['json']}; push them later with "
                             f"`wukong eval push-results --results {paths['json']} --repo-id {args.push_results}`.") from None
        print(f"dry run: wrote {where} (nothing uploaded)" if args.dry_run else f"pushed results to {args.push_results}: {where}")
    return 0


def _cmd_zero_shot(args) -> int:
    from .image_sources import hf_dataset_images, image_folder_images, imagenet_val_images
    from .prompts import load_classnames, load_templates
    from .text_feature_cache import default_text_cache_dir
    from .zero_shot import zero_shot_classification

    _check_outputs(args, "zero-shot-classification")
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
    templates = load_templates(args.templates)
    source = args.dataset or args.image_folder or args.imagenet_val
    split = "validation" if args.imagenet_val else args.split  # an ImageNet val folder is the validation split
    dataset_name = args.dataset_name or ("imagenet-1k" if args.imagenet_val else Path(str(source).rstrip("/")).name)
    model, processor = load_model_and_processor(args.model, args.preset)
    result = zero_shot_classification(
        model,
        processor,
        images,
        classnames,
        templates,
        ensemble=args.ensemble,
        batch_size=args.batch_size,
        dataset_name=dataset_name,
        split=split,
        text_cache=None if args.no_text_cache else (args.text_cache or default_text_cache_dir()),
    )
    result["dataset_source"] = str(source)
    config = _run_config(
        args, result["similarity"],
        token_wise_padding=result.get("token_wise_padding"),
        dataset={"name": dataset_name, "source": str(source), "split": split},
        classnames={"source": args.classnames or "folder / ClassLabel names", "names": classnames},
        templates={"source": args.templates, "templates": templates},
        ensemble=result["ensemble_method"],
    )
    return _finish(result, args, config)


def _read_set(args):
    from .retrieval_sets import read_retrieval_set

    return read_retrieval_set(args.format, args.data, args.split, args.images, args.split_file, args.name, args.strict)


def _cmd_retrieval(args) -> int:
    from .retrieval import evaluate_retrieval

    from .embeddings import load_embeddings

    _check_outputs(args, "image-text-retrieval")
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
    result["dataset_source"] = str(args.data)
    config = _run_config(
        args, result["similarity"],
        token_wise_padding=result.get("token_wise_padding"),
        dataset={"name": dataset.name, "source": str(args.data), "format": args.format, "split": dataset.split,
                 "images": args.images, "split_file": args.split_file},
        directions=list(dataset.directions),
        shortlist=args.shortlist,
        features_from_files={"images": args.image_features, "texts": args.text_features},
    )
    return _finish(result, args, config)


def _cmd_push_results(args) -> int:
    from ..hub import push_eval_results

    where = push_eval_results(args.repo_id, results_files=args.results, dry_run_dir=args.dry_run)
    print(f"dry run: wrote {where} (nothing uploaded)" if args.dry_run else f"pushed results to {args.repo_id}: {where}")
    return 0


def _cmd_make_dataset(args) -> int:
    from .retrieval_sets import write_retrieval_dataset

    dataset = _read_set(args)
    folder = write_retrieval_dataset(dataset, args.out)
    print(f"wrote {len(dataset.image_ids)} images, {len(dataset.texts)} texts, {len(dataset.skipped)} skipped rows to {folder}")
    return 0


def _add_model_args(p) -> None:
    p.add_argument("--model", help="model folder or Hub id (default: a randomly initialised --preset, for smoke runs)")
    p.add_argument("--preset", default="tiny-token-wise", help="preset name when --model is not given")
    p.add_argument("--batch-size", type=int, default=64, help="images per tower batch")
    add_output_argument(p, required=True, help="folder for results.json (config, metrics, model_index) and results.md")
    p.add_argument("--results-format", nargs="+", choices=("clip_benchmark", "chinese-clip"), metavar="FORMAT",
                   help="also write the results in these tools' schemas: clip_benchmark (clip_benchmark.json), "
                        "chinese-clip (retrieval: chinese-clip/<direction>.json)")
    p.add_argument("--push-results", metavar="ORG/NAME", help="append the results to this model's card on the Hub")
    p.add_argument("--dry-run", metavar="DIR", help="with --push-results: write the updated README.md to DIR, upload nothing")


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
    z.add_argument("--split", default="test", help="split of --dataset; for --image-folder, the split name reported (--imagenet-val: validation)")
    z.add_argument("--image-column", default="image", help="--dataset: column of the images")
    z.add_argument("--label-column", default="label", help="--dataset: column of the integer labels")
    z.add_argument("--classnames", help="'imagenet1k' or a file with one Chinese class name per line, in label order")
    z.add_argument("--templates", default="imagenet1k", help="'imagenet1k' (80 Chinese templates), 'none', or a file with {c} slots")
    z.add_argument("--ensemble", choices=("embedding", "similarity", "probability"), help="default: embedding (global), similarity (token-wise)")
    z.add_argument("--dataset-name", help="dataset name in reports, e.g. imagenet1k-cn (default: the --dataset id or folder name; "
                   "imagenet-1k for --imagenet-val)")
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

    u = sub.add_parser("push-results", help="append the results of `wukong eval` runs to a model's card on the Hub")
    u.add_argument("--results", nargs="+", required=True, help="results.json files written by `wukong eval`")
    u.add_argument("--repo-id", required=True, help="the model repository, org/name")
    u.add_argument("--dry-run", metavar="DIR", help="write the updated README.md to DIR, upload nothing")
    u.set_defaults(func=_cmd_push_results)

    m = sub.add_parser("make-dataset", help="convert a retrieval set into a dataset repository folder (Parquet + card)")
    _add_set_args(m)
    add_output_argument(m, required=True, help="output folder (load it with datasets.load_dataset(folder))")
    m.set_defaults(func=_cmd_make_dataset)
