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
import logging
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
logger = logging.getLogger(__name__)
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
    """One downloader shard -> Parquet (key, image, caption, url) with datasets' Image feature; returns rows.

    A shard without samples (every URL failed) writes no file and removes a stale `dest`: datasets
    cannot read a 0-row Parquet file (ArrowInvalid "BatchSize must be greater than 0").
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Features, Image, Value
    from webdataset.tariterators import tarfile_samples

    schema = Features({"key": Value("string"), "image": Image(), "caption": Value("string"), "url": Value("string")}).arrow_schema
    rows, count, writer = [], 0, None
    try:
        for sample in tarfile_samples([{"url": tar}]):
            if "jpg" not in sample or "txt" not in sample:
                raise ValueError(f"{tar!r}: sample {sample.get('__key__')!r} lacks .jpg or .txt; is this a `wukong data download` shard?")
            meta = json.loads(sample["json"]) if "json" in sample else {}
            rows.append({"key": sample["__key__"], "image": {"bytes": sample["jpg"], "path": None},
                         "caption": sample["txt"].decode("utf-8"), "url": meta.get("url", "")})
            if len(rows) >= rows_per_group:
                writer = writer or pq.ParquetWriter(dest + ".tmp", schema)
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                count += len(rows)
                rows = []
        if rows:
            writer = writer or pq.ParquetWriter(dest + ".tmp", schema)
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            count += len(rows)
    finally:
        if writer is not None:
            writer.close()
    if count == 0:
        if os.path.exists(dest):
            os.remove(dest)  # left by an earlier prepare of this shard
        return 0
    os.replace(dest + ".tmp", dest)
    return count


def _download_summary(shards_dir: str | os.PathLike) -> str:
    """' (download report: K of N URLs kept; reason n, ...)' from download_report.json, or '' without one."""
    path = os.path.join(shards_dir, "download_report.json")
    if not os.path.isfile(path):
        return ""
    with open(path) as fh:
        report = json.load(fh)
    failures = ", ".join(f"{reason} {n}" for reason, n in report.get("failures", {}).items() if n)
    return f" (download report: {report.get('kept', 0)} of {report.get('total', 0)} URLs kept; {failures or 'no failures recorded'})"


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
    # Every config in the card must name only readable files: datasets fails on a 0-row Parquet file
    # (ArrowInvalid) and on a config whose files do not exist, so empty inputs are left out and an
    # input with nothing in it at all is an error. Inputs are checked before anything is written.
    pair_files = []
    for path in sorted(pairs or []):
        if not os.path.isfile(path) or not path.endswith(".parquet"):
            raise ValueError(f"{path!r} is not a Parquet file; --pairs takes the .parquet files written by `wukong data filter`")
        schema = pq.read_schema(path)
        if not {"url", "caption"} <= set(schema.names):
            raise ValueError(f"{path!r} lacks url/caption columns (has {schema.names})")
        rows = pq.ParquetFile(path).metadata.num_rows
        if rows:
            pair_files.append((path, rows))
    if pairs and not pair_files:
        raise ValueError(f"the {len(pairs)} --pairs file(s) hold no rows (the filter kept no caption; see its filter_report.json): "
                         "nothing for the pairs config; rerun `wukong data filter` or leave out --pairs")
    tars = []
    if shards_dir:
        if not os.path.isdir(shards_dir):
            raise FileNotFoundError(f"shards folder {os.fspath(shards_dir)!r} does not exist; pass the --out folder of `wukong data download`")
        tars = sorted(glob.glob(os.path.join(shards_dir, "*.tar")))
        if not tars:
            raise FileNotFoundError(f"no .tar shards in {os.fspath(shards_dir)!r}; run `wukong data download` first")
    configs, num_pairs, num_images = [], 0, 0
    download_report = None
    if tars:
        (out / "images").mkdir(parents=True, exist_ok=True)
        empty = []
        for tar in tqdm(tars, desc="prepare", unit="shard"):
            rows = _tar_to_parquet(tar, str(out / "images" / (os.path.basename(tar)[: -len(".tar")] + ".parquet")))
            num_images += rows
            if rows == 0:
                empty.append(os.path.basename(tar))
        if num_images == 0:
            for folder in (out / "images", out):  # leave no empty folder behind
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            raise ValueError(
                f"no image in the {len(tars)} shard(s) of {os.fspath(shards_dir)!r}{_download_summary(shards_dir)}: "
                f"see why with `wukong data report {os.fspath(shards_dir)}`, fix the URLs or the network and rerun `wukong data download`"
            )
        if empty:
            logger.warning("prepare: %d of %d shards hold no image (all their URLs failed) and are left out: %s",
                           len(empty), len(tars), ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else ""))
        download_report = os.path.join(shards_dir, "download_report.json")
    if pair_files:
        (out / "pairs").mkdir(parents=True, exist_ok=True)
        for i, (path, rows) in enumerate(pair_files):
            _link_or_copy(path, str(out / "pairs" / f"pairs-{i:05d}.parquet"))
            num_pairs += rows
        if len(pair_files) < len(pairs):
            logger.warning("prepare: %d of %d --pairs files hold no rows and are left out", len(pairs) - len(pair_files), len(pairs))
        configs.append("pairs")
    if tars:
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
