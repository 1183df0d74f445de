"""`wukong embed images|texts`: a collection -> one safetensors file of features, resumable.

    wukong embed images --folder photos/ --model M --out photos.safetensors [--tokens] [--backend onnx]
    wukong embed texts --captions captions.txt --model M --out captions.safetensors
    wukong embed images --format chinese-clip --data MUGE --split valid --model M --out muge-images.safetensors
    wukong eval retrieval --format chinese-clip --data MUGE --split valid --name muge --model M \
        --image-features muge-images.safetensors --text-features muge-texts.safetensors --out runs/muge

Kill it and run the same command again: it continues from the last finished shard.
The library functions are in wukong_hf.evaluation.embeddings.
"""

from __future__ import annotations

from pathlib import Path

from .cli import add_output_argument

__all__ = ["register"]


def _image_folder(folder: str) -> tuple[list, list[str]]:
    from functools import partial

    from .evaluation.encoding import open_rgb
    from .evaluation.image_sources import IMAGE_EXTENSIONS, image_files

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist.")
    files, _ = image_files(root)  # the walk the Space index and export use: sorted, hidden files and folders left out
    if not files:
        raise ValueError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}.")
    return [partial(open_rgb, str(p)) for p in files], [p.relative_to(root).as_posix() for p in files]


def _captions_file(path: str) -> tuple[list[str], list[str]]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"Captions file {file} does not exist; give a UTF-8 text file with one caption per line.")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{file} is not UTF-8 text ({err}); save it as UTF-8, one caption per line.") from err
    texts, ids = [], []
    for number, line in enumerate(lines, start=1):
        if line.strip():  # blank lines are not captions; ids stay the line numbers of the file
            texts.append(line.strip())
            ids.append(str(number))
    if not texts:
        raise ValueError(f"{file} holds no captions (every line is blank).")
    return texts, ids


def _captions_dataset(path: str, split: str, column: str, id_column: str | None) -> tuple[list[str], list[str]]:
    from .data.dataset_source import open_dataset

    data = open_dataset(path, split=split)
    for name in (column, id_column):
        if name and name not in data.column_names:
            raise ValueError(f"{path} has no column {name!r}; its columns are {data.column_names}.")
    texts = [str(t) for t in data[column]]
    ids = [str(i) for i in data[id_column]] if id_column else [str(i) for i in range(len(texts))]
    return texts, ids


def _encoder(args):
    from .model_folders import load_model_and_processor

    model, processor = load_model_and_processor(args.model, args.preset)
    if args.backend == "onnx":
        from .evaluation.fingerprints import model_fingerprint
        from .evaluation.text_feature_cache import default_cache_root
        from .onnx_encoder import OnnxEncoder, onnx_available

        if not onnx_available():
            raise ValueError("--backend onnx needs ONNX Runtime: pip install 'wukong-hf[onnx]'.")
        fingerprints = model_fingerprint(model)
        keep_tokens = model.similarity_rule.uses_tokens or args.tokens
        folder = args.onnx_dir or default_cache_root() / "onnx" / (
            f"{fingerprints['image'][:16]}-{fingerprints['text'][:16]}-{'tokens' if keep_tokens else 'global'}")
        print(f"ONNX Runtime backend: graphs in {folder} (exported once per model)")
        return OnnxEncoder.from_model(model, folder, keep_tokens=keep_tokens, fingerprints=fingerprints), processor
    return model, processor


def _finish(path: Path) -> int:
    from .evaluation.embeddings import load_embeddings

    embeddings = load_embeddings(path)
    tokens = "global and token" if embeddings.features.token_embeds is not None else "global"
    print(f"wrote {len(embeddings.ids)} {embeddings.modality} embeddings ({tokens} features, dim "
          f"{embeddings.features.embeds.shape[1]}) to {path}; {len(embeddings.skipped)} skipped")
    return 0


def _embed(args, embed, items, ids) -> int:
    """Run embed_images / embed_texts on items with the command's encoder and options; print the result."""
    encoder, processor = _encoder(args)
    path = embed(encoder, processor, items, ids, args.out, batch_size=args.batch_size, shard_size=args.shard_size,
                 keep_tokens=args.tokens or None, overwrite=args.overwrite,
                 model_name=args.model or f"{args.preset} (random init)")
    return _finish(path)


def _cmd_images(args) -> int:
    from .evaluation.embeddings import embed_images

    if args.folder:
        loaders, ids = _image_folder(args.folder)
    else:
        dataset = _read_set(args)
        loaders, ids = dataset.image_loaders, dataset.image_ids
    return _embed(args, embed_images, loaders, ids)


def _cmd_texts(args) -> int:
    from .evaluation.embeddings import embed_texts

    if args.captions:
        texts, ids = _captions_file(args.captions)
    elif args.dataset:
        texts, ids = _captions_dataset(args.dataset, args.split or "train", args.text_column, args.id_column)
    else:
        dataset = _read_set(args)
        texts, ids = dataset.texts, dataset.text_ids
    return _embed(args, embed_texts, texts, ids)


def _read_set(args):
    from .evaluation.retrieval_sets import read_retrieval_set

    if not args.format:
        raise ValueError("--data needs --format (chinese-clip, hash-captions, aic-icc or dataset).")
    return read_retrieval_set(args.format, args.data, args.split, args.images, args.split_file, args.name)


def _add_common(p, default_batch: int, default_shard: int) -> None:
    add_output_argument(p, required=True, help="safetensors file to write (unfinished shards go to OUT.partial/)")
    p.add_argument("--model", help="model folder or Hub id (default: a randomly initialised --preset, for smoke runs)")
    p.add_argument("--preset", default="tiny-token-wise", help="preset name when --model is not given")
    p.add_argument("--batch-size", type=int, default=default_batch, help="items per tower batch")
    p.add_argument("--shard-size", type=int, default=default_shard, help="items per resumable shard")
    p.add_argument("--tokens", action="store_true", help="also store token features (always stored for token-wise models)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="onnx: run the towers in ONNX Runtime (opt-in, about 2x faster on CPU; needs wukong-hf[onnx])")
    p.add_argument("--onnx-dir", help="folder for the exported ONNX graphs (default: ~/.cache/wukong_hf/onnx/<model>)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT and any unfinished run instead of continuing")


def _add_set(p) -> None:
    from .evaluation.retrieval_sets import RETRIEVAL_FORMATS

    p.add_argument("--format", choices=RETRIEVAL_FORMATS, help="with --data: a retrieval set's format (as wukong eval retrieval)")
    p.add_argument("--images", help="image folder of a hash-captions / aic-icc set")
    p.add_argument("--split-file", help="hash-captions: image names of the split")
    p.add_argument("--split", help="split of --data or --dataset")
    p.add_argument("--name", help="retrieval set name")


def register(subparsers) -> None:
    p = subparsers.add_parser("embed", help="embed images or captions into a safetensors file (resumable)")
    sub = p.add_subparsers(dest="embed_command", metavar="WHAT", required=True)

    i = sub.add_parser("images", help="images (a folder or a retrieval set) -> features file")
    source = i.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", help="folder of image files, searched recursively (hidden files and folders skipped); ids are paths relative to it")
    source.add_argument("--data", help="a retrieval set (with --format); ids are its image ids")
    _add_set(i)
    _add_common(i, 64, 1024)
    i.set_defaults(func=_cmd_images)

    t = sub.add_parser("texts", help="captions (a text file, a dataset or a retrieval set) -> features file")
    source = t.add_mutually_exclusive_group(required=True)
    source.add_argument("--captions", help="UTF-8 text file, one caption per line; ids are line numbers")
    source.add_argument("--dataset", help="datasets folder or Hub id with a caption column")
    source.add_argument("--data", help="a retrieval set (with --format); ids are its text ids")
    t.add_argument("--text-column", default="caption", help="--dataset: the caption column")
    t.add_argument("--id-column", help="--dataset: a column of ids (default: row numbers)")
    _add_set(t)
    _add_common(t, 256, 8192)
    t.set_defaults(func=_cmd_texts)
