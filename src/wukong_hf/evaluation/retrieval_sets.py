"""Image-text retrieval evaluation sets: readers for the published formats and a `datasets` form.

Accepted inputs (exact formats in docs/evaluation.md, Retrieval):
  chinese-clip  <folder>/<split>_imgs.tsv ("image_id<TAB>base64 image" per line) and
                <folder>/<split>_texts.jsonl ({"text_id", "text", "image_ids": [...]} per line);
                MUGE, Flickr30K-CN and COCO-CN as Chinese-CLIP distributes them.
  hash-captions captions file with "IMAGE#TAG#K<TAB or spaces>caption" or "IMAGE#K<TAB>caption" lines
                (Flickr8K-CN, Flickr30K-CN, COCO-CN releases), an image folder and an optional
                split list (one image name per line).
  aic-icc       caption_validation_annotations JSON ([{"image_id": "x.jpg", "caption": [...]}, ...])
                and its image folder; the WenLan protocol keeps the first 10,000 images.
  dataset       a folder written by write_retrieval_dataset (or its Hub id): Parquet rows of
                image_id, image, captions, text_ids.

Bad rows (broken base64, unreadable JSON, captions of missing images) are skipped and counted in
RetrievalSet.skipped (the log and any "nothing usable" error give the count per reason and the first
example), or raise at once with strict=True; nothing is dropped silently. Base64 may be standard or
URL-safe (Chinese-CLIP writes URL-safe), with or without padding.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from .encoding import ImageLoader, open_rgb

__all__ = [
    "RetrievalSet",
    "read_chinese_clip",
    "read_hash_captions",
    "read_aic_icc",
    "read_retrieval_dataset",
    "write_retrieval_dataset",
    "AIC_ICC_WENLAN_IMAGES",
    "RETRIEVAL_FORMATS",
    "read_retrieval_set",
]

logger = logging.getLogger(__name__)

AIC_ICC_WENLAN_IMAGES = 10_000


@dataclass
class RetrievalSet:
    """An evaluation set: images, texts and which images each text describes.

    image_bytes[i]() -> encoded bytes of image i (lazy). text_images[j]: indices of the images
    text j describes (several for MUGE). directions: ("i2t", "t2i"), or ("t2i",) for MUGE.
    skipped: [{"row", "id", "reason", "kind"}] for every input row that was left out (kind: the reason
    without its details, for counting).
    """

    name: str
    split: str
    image_ids: list[str]
    image_bytes: list[Callable[[], bytes]]
    text_ids: list[str]
    texts: list[str]
    text_images: list[list[int]]
    directions: tuple[str, ...] = ("i2t", "t2i")
    skipped: list[dict] = field(default_factory=list)

    @property
    def image_loaders(self) -> list[ImageLoader]:
        return [partial(_open_lazy, load) for load in self.image_bytes]

    def image_texts(self) -> list[list[int]]:
        """For each image, the indices of the texts that describe it."""
        result: list[list[int]] = [[] for _ in self.image_ids]
        for j, images in enumerate(self.text_images):
            for i in images:
                result[i].append(j)
        return result


def _open_lazy(load: Callable[[], bytes]):
    return open_rgb(load())


def _skip(skipped: list[dict], strict: bool, where: str, row_id: str, reason: str, kind: str) -> None:
    """Record a left-out row; kind is the reason without its details (counted per kind in the summary)."""
    if strict:
        raise ValueError(f"{where}: {reason}. Fix or remove that row, or run without --strict to skip and count it.")
    skipped.append({"row": where, "id": row_id, "reason": reason, "kind": kind})


def skipped_summary(skipped: list[dict]) -> str:
    """One line: "N row(s) skipped: kind count, ...; first: FILE line L (id 'X'): reason" ("" when none)."""
    if not skipped:
        return ""
    counts: dict[str, int] = {}
    for row in skipped:
        counts[row.get("kind") or row["reason"]] = counts.get(row.get("kind") or row["reason"], 0) + 1
    first = skipped[0]
    where = f"{first['row']} (id {first['id']!r})" if first["id"] else first["row"]
    per_kind = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items(), key=lambda item: -item[1]))
    return f"{per_kind}; first: {where}: {first['reason']}"


def _finish(rs: RetrievalSet) -> RetrievalSet:
    if not rs.texts or not rs.image_ids:
        what = f"{len(rs.skipped)} rows skipped: {skipped_summary(rs.skipped)}" if rs.skipped else "the files hold no rows"
        raise ValueError(f"{rs.name} {rs.split}: no usable images or texts were read ({what}).")
    if rs.skipped:
        logger.warning("%s %s: skipped %d row(s): %s", rs.name, rs.split, len(rs.skipped), skipped_summary(rs.skipped))
    return rs


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


_URL_SAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


def decode_base64(data: bytes) -> bytes:
    """Standard or URL-safe base64 (Chinese-CLIP writes URL-safe), padding optional -> bytes.

    Raises binascii.Error for anything else (stray characters, impossible length).
    """
    data = data.strip().translate(_URL_SAFE_TO_STANDARD).rstrip(b"=")
    return base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)


def _read_tsv_image(path: str, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return decode_base64(f.readline().split(b"\t", 1)[1])


def read_chinese_clip(folder: str | Path, split: str = "valid", name: str = "chinese-clip", strict: bool = False) -> RetrievalSet:
    """Chinese-CLIP's format: <split>_imgs.tsv and <split>_texts.jsonl in folder.

    MUGE (name "muge") is evaluated text-to-image only, as the paper does.
    """
    folder = Path(folder)
    tsv, jsonl = folder / f"{split}_imgs.tsv", folder / f"{split}_texts.jsonl"
    for path in (tsv, jsonl):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; Chinese-CLIP sets hold {split}_imgs.tsv and {split}_texts.jsonl.")
    skipped: list[dict] = []
    image_ids, loaders, index = [], [], {}
    with open(tsv, "rb") as f:
        offset = 0
        for number, line in enumerate(f, start=1):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            where = f"{tsv.name} line {number}"
            parts = line.rstrip(b"\r\n").split(b"\t")
            if len(parts) != 2 or not parts[0].strip():
                _skip(skipped, strict, where, "", "expected 'image_id<TAB>base64'", "not an image row")
                continue
            image_id = parts[0].decode("utf-8").strip()
            try:
                decode_base64(parts[1])
            except (binascii.Error, ValueError) as err:
                _skip(skipped, strict, where, image_id, f"broken base64 ({err})", "broken base64")
                continue
            if image_id in index:
                _skip(skipped, strict, where, image_id, "repeated image id", "repeated image id")
                continue
            index[image_id] = len(image_ids)
            image_ids.append(image_id)
            loaders.append(partial(_read_tsv_image, str(tsv), start))
    text_ids, texts, text_images = [], [], []
    for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{jsonl.name} line {number}"
        try:
            row = json.loads(line)
            text_id, text, ids = str(row["text_id"]), str(row["text"]), [str(i) for i in row["image_ids"]]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            _skip(skipped, strict, where, "", f"not a JSON object with text_id, text, image_ids ({type(err).__name__}: {err})",
                  "not a JSON text row")
            continue
        if not text.strip():
            _skip(skipped, strict, where, text_id, "empty text", "empty text")
            continue
        missing = [i for i in ids if i not in index]
        if missing:
            _skip(skipped, strict, where, text_id, f"image ids {missing[:5]} are not in {tsv.name}", "images not in the image file")
        present = [index[i] for i in ids if i in index]
        if not present:
            continue
        text_ids.append(text_id)
        texts.append(text)
        text_images.append(present)
    directions = ("t2i",) if name.lower() == "muge" else ("i2t", "t2i")
    return _finish(RetrievalSet(name, split, image_ids, loaders, text_ids, texts, text_images, directions, skipped))


def _image_path(image_dir: Path, key: str) -> Path | None:
    for candidate in (image_dir / key, image_dir / f"{key}.jpg", image_dir / f"{key}.jpeg", image_dir / f"{key}.png"):
        if candidate.is_file():
            return candidate
    return None


def read_hash_captions(
    captions_file: str | Path,
    image_dir: str | Path,
    split_file: str | Path | None = None,
    name: str = "flickr30k-cn",
    split: str = "test",
    strict: bool = False,
) -> RetrievalSet:
    """Flickr8K-CN / Flickr30K-CN / COCO-CN releases: "IMAGE#...<whitespace>caption" lines.

    IMAGE is a file name in image_dir, with or without .jpg. Only images listed in split_file
    (one per line, with or without extension) are kept when it is given; captions of other images
    are ignored (not counted as skipped).
    """
    captions_file, image_dir = Path(captions_file), Path(image_dir)
    if not captions_file.is_file():
        raise FileNotFoundError(f"Captions file {captions_file} does not exist.")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"Image folder {image_dir} does not exist.")
    wanted = None
    if split_file is not None:
        wanted = {Path(line.strip()).stem for line in Path(split_file).read_text(encoding="utf-8").splitlines() if line.strip()}
    skipped: list[dict] = []
    image_ids, loaders, index = [], [], {}
    text_ids, texts, text_images = [], [], []
    for number, line in enumerate(captions_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{captions_file.name} line {number}"
        parts = line.strip().split(None, 1)
        if len(parts) != 2 or "#" not in parts[0]:
            _skip(skipped, strict, where, "", "expected 'IMAGE#K<TAB>caption'", "not a caption line")
            continue
        key_full, caption = parts
        key = key_full.split("#", 1)[0]
        if wanted is not None and Path(key).stem not in wanted:
            continue
        if key not in index:
            path = _image_path(image_dir, key)
            if path is None:
                _skip(skipped, strict, where, key_full, f"image {key} is not in {image_dir}", "image file missing")
                continue
            index[key] = len(image_ids)
            image_ids.append(key)
            loaders.append(partial(_read_file, str(path)))
        text_ids.append(key_full)
        texts.append(caption.strip())
        text_images.append([index[key]])
    return _finish(RetrievalSet(name, split, image_ids, loaders, text_ids, texts, text_images, ("i2t", "t2i"), skipped))


def read_aic_icc(
    annotations_file: str | Path,
    image_dir: str | Path,
    max_images: int | None = AIC_ICC_WENLAN_IMAGES,
    split: str = "validation",
    strict: bool = False,
) -> RetrievalSet:
    """AI Challenger caption validation set, WenLan protocol: the first max_images images (file order) and their captions."""
    annotations_file, image_dir = Path(annotations_file), Path(image_dir)
    if not annotations_file.is_file():
        raise FileNotFoundError(f"Annotations file {annotations_file} does not exist.")
    try:
        rows = json.loads(annotations_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{annotations_file} is not valid JSON ({err}); expected a list of {{image_id, caption}}.") from err
    if not isinstance(rows, list):
        raise ValueError(f"{annotations_file} holds a {type(rows).__name__}; expected a list of {{image_id, caption}}.")
    skipped: list[dict] = []
    image_ids, loaders = [], []
    text_ids, texts, text_images = [], [], []
    for number, row in enumerate(rows):
        if max_images is not None and len(image_ids) >= max_images:
            break
        where = f"{annotations_file.name} entry {number}"
        if not isinstance(row, dict) or "image_id" not in row or not isinstance(row.get("caption"), list):
            _skip(skipped, strict, where, "", "expected {'image_id': ..., 'caption': [...]}", "not an annotation entry")
            continue
        path = _image_path(image_dir, str(row["image_id"]))
        if path is None:
            _skip(skipped, strict, where, str(row["image_id"]), f"image is not in {image_dir}", "image file missing")
            continue
        image_ids.append(str(row["image_id"]))
        loaders.append(partial(_read_file, str(path)))
        for k, caption in enumerate(row["caption"]):
            if not str(caption).strip():
                _skip(skipped, strict, where, f"{row['image_id']}#{k}", "empty caption", "empty caption")
                continue
            text_ids.append(f"{row['image_id']}#{k}")
            texts.append(str(caption).strip())
            text_images.append([len(image_ids) - 1])
    return _finish(RetrievalSet("aic-icc", split, image_ids, loaders, text_ids, texts, text_images, ("i2t", "t2i"), skipped))


# ----- the `datasets` form -------------------------------------------------------------------

def _dataset_features():
    import datasets

    return datasets.Features(
        {
            "image_id": datasets.Value("string"),
            "image": datasets.Image(),
            "captions": datasets.List(datasets.Value("string")),
            "text_ids": datasets.List(datasets.Value("string")),
        }
    )


_CARD = """---
{yaml}---

# {name} ({split}) for image-text retrieval evaluation

Written by `wukong eval make-dataset` (wukong-hf). One row per image: `image_id`, `image` (embedded
bytes), `captions` and their `text_ids`. A text that describes several images (MUGE) appears in
each of their rows with the same text id. {num_images} images, {num_texts} texts.

```python
from datasets import load_dataset
ds = load_dataset("path/to/this/folder", split="{split}")
```

Evaluate with `wukong eval retrieval --dataset path/to/this/folder --split {split} --model ...`.
Check the licence of the original release before sharing this folder.
"""


def write_retrieval_dataset(rs: RetrievalSet, out_dir: str | Path, rows_per_shard: int = 1000) -> Path:
    """Write rs as a dataset repository folder (README.md with YAML configs, Parquet with embedded images).

    Returns the folder; `datasets.load_dataset(folder, split=rs.split)` reads it back.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    if any(data_dir.glob(f"{rs.split}-*.parquet")):
        raise ValueError(f"{data_dir} already holds {rs.split} shards; choose an empty output folder.")
    features = _dataset_features()
    schema = features.arrow_schema
    image_texts = rs.image_texts()
    num_shards = max(1, -(-len(rs.image_ids) // rows_per_shard))
    for shard in tqdm(range(num_shards), desc="writing parquet", unit="shard"):
        rows = []
        for i in range(shard * rows_per_shard, min((shard + 1) * rows_per_shard, len(rs.image_ids))):
            rows.append(
                {
                    "image_id": rs.image_ids[i],
                    "image": {"bytes": rs.image_bytes[i](), "path": None},
                    "captions": [rs.texts[j] for j in image_texts[i]],
                    "text_ids": [rs.text_ids[j] for j in image_texts[i]],
                }
            )
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), data_dir / f"{rs.split}-{shard:05d}-of-{num_shards:05d}.parquet")
    card_data = {
        "configs": [
            {"config_name": "default", "data_files": [{"split": rs.split, "path": f"data/{rs.split}-*.parquet"}], "default": True}
        ],
        "task_categories": ["image-to-text", "text-to-image"],
        "language": ["zh"],
        "wukong_eval": {"name": rs.name, "directions": list(rs.directions)},
    }
    yaml_text = yaml.safe_dump(card_data, allow_unicode=True, sort_keys=False)
    (out_dir / "README.md").write_text(
        _CARD.format(yaml=yaml_text, name=rs.name, split=rs.split, num_images=len(rs.image_ids), num_texts=len(rs.texts)),
        encoding="utf-8",
    )
    if rs.skipped:
        (out_dir / f"skipped-{rs.split}.json").write_text(json.dumps(rs.skipped, ensure_ascii=False, indent=1), encoding="utf-8")
    return out_dir


def _card_settings(path: str) -> dict:
    from huggingface_hub import DatasetCard

    readme = Path(path) / "README.md"
    try:
        card = DatasetCard.load(readme if readme.is_file() else path)
    except Exception as err:  # an unreachable Hub or a card without YAML only loses the defaults below
        logger.info("no dataset card settings for %s (%s)", path, err)
        return {}
    return (card.data.to_dict() or {}).get("wukong_eval", {})


def _dataset_image(dataset, row: int) -> bytes:
    value = dataset[row]["image"]
    return value["bytes"] if value.get("bytes") else _read_file(value["path"])


def read_retrieval_dataset(path: str, split: str = "test", name: str | None = None) -> RetrievalSet:
    """A folder written by write_retrieval_dataset, or its Hub id. Texts are merged by text id."""
    import datasets

    # datasets keys its cache of local folders by name, not content: rebuild so a re-converted folder is read fresh.
    mode = "force_redownload" if Path(path).is_dir() else None
    dataset = datasets.load_dataset(path, split=split, download_mode=mode)
    missing = {"image_id", "image", "captions", "text_ids"} - set(dataset.column_names)
    if missing:
        raise ValueError(
            f"Dataset {path} split {split} lacks columns {sorted(missing)}; convert the set with `wukong eval make-dataset`."
        )
    settings = _card_settings(path)
    dataset = dataset.cast_column("image", datasets.Image(decode=False))
    text_index: dict[str, int] = {}
    text_ids, texts, text_images = [], [], []
    image_ids = list(dataset["image_id"])
    for i, (captions, ids) in enumerate(zip(dataset["captions"], dataset["text_ids"])):
        for caption, text_id in zip(captions, ids):
            if text_id not in text_index:
                text_index[text_id] = len(text_ids)
                text_ids.append(text_id)
                texts.append(caption)
                text_images.append([])
            text_images[text_index[text_id]].append(i)
    loaders = [partial(_dataset_image, dataset, i) for i in range(len(dataset))]
    rs_name = name or settings.get("name") or Path(path).name
    directions = tuple(settings.get("directions", ("i2t", "t2i")))
    return _finish(RetrievalSet(rs_name, split, image_ids, loaders, text_ids, texts, text_images, directions))


RETRIEVAL_FORMATS = ("chinese-clip", "hash-captions", "aic-icc", "dataset")


def read_retrieval_set(
    fmt: str,
    source: str,
    split: str | None = None,
    image_dir: str | None = None,
    split_file: str | None = None,
    name: str | None = None,
    strict: bool = False,
) -> RetrievalSet:
    """One entry point for every reader.

    fmt: one of RETRIEVAL_FORMATS. source: the Chinese-CLIP folder, the captions file, the
    AIC-ICC annotations JSON, or the dataset folder / Hub id. image_dir: the image folder of the
    hash-captions and aic-icc formats.
    """
    if fmt not in RETRIEVAL_FORMATS:
        raise ValueError(f"Unknown retrieval-set format {fmt!r}; choose one of {RETRIEVAL_FORMATS}.")
    if fmt in ("hash-captions", "aic-icc") and not image_dir:
        raise ValueError(f"The {fmt} format needs the image folder (--images DIR).")
    if fmt == "chinese-clip":
        return read_chinese_clip(source, split or "valid", name or Path(source).name, strict)
    if fmt == "hash-captions":
        return read_hash_captions(source, image_dir, split_file, name or "flickr30k-cn", split or "test", strict)
    if fmt == "aic-icc":
        return read_aic_icc(source, image_dir, AIC_ICC_WENLAN_IMAGES, split or "validation", strict)
    return read_retrieval_dataset(source, split or "test", name)
