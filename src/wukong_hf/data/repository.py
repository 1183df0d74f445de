"""A dataset repository folder for `load_dataset` (card with YAML configs over Parquet + WebDataset shards), and its push.

datasets 5 runs no loading scripts, so the Hugging Face-native form of Wukong is a folder (or Hub
repo): README.md whose YAML `configs` name `images` and `pairs`. Both are Parquet: datasets picks one
builder for a whole repository (a WebDataset config beside a Parquet one fails to load), so the
downloaded .tar shards are repacked, bytes unchanged, into Parquet with an Image column.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import shutil
import string
import sys
from importlib import resources
from pathlib import Path

__all__ = ["LICENCE_WARNING", "CARD_TEMPLATE", "prepare_dataset_repo", "push_dataset_repo"]

# dataset_scripts/wukong/ is packaged as wukong_hf.dataset_card_templates (pyproject package-dir), a plain folder on disk.
CARD_TEMPLATE = Path(str(resources.files("wukong_hf.dataset_card_templates"))) / "README.md"
LICENCE_WARNING = (
    "WARNING: Wukong is licensed CC BY-NC-SA 4.0 (non-commercial) and its terms forbid redistributing "
    "the data. Keep the repository private; do not share captions, URLs or images. Trained models may be shared."
)
# Never upload files that can run code when loaded.
UNSAFE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".py", ".sh")


def _link_or_copy(src: str, dst: str) -> None:
    if os.path.exists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)  # a hard link costs no space; shards are never modified in place
    except OSError:
        shutil.copy2(src, dst)


def _tar_to_parquet(tar: str, dest: str, rows_per_group: int = 1000) -> int:
    """One downloader shard -> Parquet (key, image, caption, url) with datasets' Image feature; returns rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Features, Image, Value
    from webdataset.tariterators import tarfile_samples

    schema = Features({"key": Value("string"), "image": Image(), "caption": Value("string"), "url": Value("string")}).arrow_schema
    rows, count = [], 0
    with pq.ParquetWriter(dest + ".tmp", schema) as writer:
        for sample in tarfile_samples([{"url": tar}]):
            if "jpg" not in sample or "txt" not in sample:
                raise ValueError(f"{tar!r}: sample {sample.get('__key__')!r} lacks .jpg or .txt; is this a `wukong data download` shard?")
            meta = json.loads(sample["json"]) if "json" in sample else {}
            rows.append({"key": sample["__key__"], "image": {"bytes": sample["jpg"], "path": None},
                         "caption": sample["txt"].decode("utf-8"), "url": meta.get("url", "")})
            if len(rows) >= rows_per_group:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                count += len(rows)
                rows = []
        if rows or count == 0:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            count += len(rows)
    os.replace(dest + ".tmp", dest)
    return count


def _summary(path: str | None, keys: tuple[str, ...]) -> str:
    if not path or not os.path.isfile(path):
        return "not recorded"
    with open(path) as fh:
        report = json.load(fh)
    return ", ".join(f"{k} {json.dumps(report[k], ensure_ascii=False)}" for k in keys if k in report)


def prepare_dataset_repo(
    out_dir: str | os.PathLike,
    *,
    pairs: list[str] | None = None,
    shards_dir: str | os.PathLike | None = None,
    filter_report: str | None = None,
    card_template: str | os.PathLike = CARD_TEMPLATE,
) -> dict:
    """Write out_dir/{README.md, pairs/*.parquet, images/*.parquet} from a filtered table and downloaded shards.

    pairs: Parquet files with url, caption (from `wukong data filter`); shards_dir: folder of NNNNN.tar
    (from `wukong data download`, whose download_report.json is summarised in the card).
    Returns {"configs": [...], "num_pairs", "num_images", "folder"}.
    """
    import pyarrow.parquet as pq
    from huggingface_hub import DatasetCard
    from tqdm.auto import tqdm

    if not pairs and not shards_dir:
        raise ValueError("nothing to prepare: pass --pairs (Parquet from `wukong data filter`) and/or --shards (from `wukong data download`)")
    if not os.path.isfile(card_template):
        raise FileNotFoundError(f"card template {os.fspath(card_template)!r} not found; pass card_template= (a copy of dataset_scripts/wukong/README.md)")
    out = Path(out_dir)
    configs, num_pairs, num_images = [], 0, 0
    if pairs:
        (out / "pairs").mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(sorted(pairs)):
            if not os.path.isfile(path) or not path.endswith(".parquet"):
                raise ValueError(f"{path!r} is not a Parquet file; --pairs takes the .parquet files written by `wukong data filter`")
            schema = pq.read_schema(path)
            if not {"url", "caption"} <= set(schema.names):
                raise ValueError(f"{path!r} lacks url/caption columns (has {schema.names})")
            num_pairs += pq.ParquetFile(path).metadata.num_rows
            _link_or_copy(path, str(out / "pairs" / f"pairs-{i:05d}.parquet"))
        configs.append("pairs")
    download_report = None
    if shards_dir:
        tars = sorted(glob.glob(os.path.join(shards_dir, "*.tar")))
        if not tars:
            raise FileNotFoundError(f"no .tar shards in {os.fspath(shards_dir)!r}; run `wukong data download` first")
        (out / "images").mkdir(parents=True, exist_ok=True)
        for tar in tqdm(tars, desc="prepare", unit="shard"):
            num_images += _tar_to_parquet(tar, str(out / "images" / (os.path.basename(tar)[: -len(".tar")] + ".parquet")))
        download_report = os.path.join(shards_dir, "download_report.json")
        configs.append("images")
    with open(card_template, encoding="utf-8") as fh:
        text = string.Template(fh.read()).safe_substitute(
            prepared_on=datetime.date.today().isoformat(),
            num_pairs=f"{num_pairs:,}" if pairs else "not prepared",
            num_images=f"{num_images:,}" if shards_dir else "not prepared",
            filter_summary=_summary(filter_report, ("total", "kept", "dropped", "names_masked")),
            download_summary=_summary(download_report, ("total", "kept", "success_rate", "failures")),
        )
    card = DatasetCard(text)
    kept = [c for c in card.data.configs if c["config_name"] in configs]
    kept[0]["default"] = True
    for c in kept[1:]:
        c.pop("default", None)
    card.data.configs = kept
    card.save(str(out / "README.md"))
    return {"folder": str(out), "configs": configs, "num_pairs": num_pairs, "num_images": num_images}


def push_dataset_repo(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = True,
    dry_run: bool = False,
    token: str | None = None,
    api=None,
) -> list[str]:
    """Upload a prepared folder to a Hub dataset repo (private unless private=False). Prints the licence warning.

    dry_run: list what would be uploaded and stop. `api`: an HfApi-like object (for tests). Returns the file list.
    """
    folder = Path(folder)
    if not (folder / "README.md").is_file():
        raise FileNotFoundError(f"{os.fspath(folder)!r} has no README.md; run `wukong data prepare` first")
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    unsafe = [f for f in files if f.endswith(UNSAFE_SUFFIXES)]
    if unsafe:
        raise ValueError(f"refusing to upload files that can run code when loaded: {unsafe}; remove them from {os.fspath(folder)!r}")
    print(LICENCE_WARNING, file=sys.stderr)
    if not private:
        print("WARNING: pushing a PUBLIC repository; the Wukong terms forbid redistribution.", file=sys.stderr)
    if dry_run:
        print(f"dry run: would upload {len(files)} files to dataset repo {repo_id} (private={private})", file=sys.stderr)
        return files
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset", commit_message="Add prepared Wukong data")
    return files
