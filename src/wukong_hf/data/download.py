"""Download URL/caption rows into WebDataset shards with the paper's image filter.

Why not img2dataset: `pip install img2dataset` (1.47) pins webdataset < 1 (it would downgrade the
project's webdataset 1.0) and pulls in wandb, opencv, albumentations and scipy. This module writes
the same output layout (NNNNN.tar with KEY.jpg / KEY.txt / KEY.json, NNNNN.parquet, NNNNN_stats.json),
so shards made by img2dataset on a cluster (its pyspark / ray distributors) load the same way.

Input rows are cut into fixed shards of `shard_size` rows in input order. A shard is written to
temporary files and renamed, and its _stats.json is written last: a shard with stats is complete, any
other is redone from scratch. Resuming therefore neither duplicates nor loses a sample.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.client import HTTPException, IncompleteRead
from itertools import islice

__all__ = ["DownloadConfig", "DownloadReport", "FAILURE_REASONS", "download_images", "fetch_and_process"]

FAILURE_REASONS = (
    "unsupported_scheme",
    "http_error",
    "timeout",
    "too_large",
    "truncated",
    "network_error",
    "not_an_image",
    "decode_error",
    "decompression_bomb",
    "too_small",
    "bad_aspect_ratio",
)


@dataclass
class DownloadConfig:
    """Limits and image rules. The paper keeps images with both sides > 200 px and long/short <= 3."""

    image_size: int = 256  # shorter side after resize (never upscaled); training crops 224 from it
    min_side: int = 200
    max_aspect_ratio: float = 3.0
    timeout: float = 10.0  # seconds for the whole request, body included
    max_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 64 * 1024 * 1024  # decompression-bomb guard, checked from the header before decoding
    jpeg_quality: int = 90
    shard_size: int = 10_000
    threads: int = 32
    processes: int = 1
    user_agent: str = "wukong-hf/0.1 (+https://github.com/huawei-noah/Pretrained-Language-Model)"

    def __post_init__(self):
        if self.shard_size < 1 or self.threads < 1 or self.processes < 1:
            raise ValueError("shard_size, threads and processes must all be >= 1")
        if self.timeout <= 0 or self.max_bytes <= 0:
            raise ValueError("timeout and max_bytes must be positive")


@dataclass
class DownloadReport:
    """total = kept + sum(failures.values()); per shard and for the whole run."""

    total: int = 0
    kept: int = 0
    failures: Counter = field(default_factory=Counter)
    shards_written: int = 0
    shards_skipped: int = 0
    seconds: float = 0.0

    def merge_stats(self, stats: dict) -> None:
        self.total += stats["total"]
        self.kept += stats["kept"]
        self.failures.update(stats["failures"])

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "kept": self.kept,
            "success_rate": round(self.kept / self.total, 4) if self.total else 0.0,
            "failures": {reason: self.failures.get(reason, 0) for reason in FAILURE_REASONS},
            "shards_written": self.shards_written,
            "shards_skipped_as_complete": self.shards_skipped,
            "seconds": round(self.seconds, 2),
        }


class _Failure(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    # urllib would also follow redirects to ftp://; only http/https are allowed anywhere in the chain.
    max_redirections = 5

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not newurl.lower().startswith(("http://", "https://")):
            raise _Failure("unsupported_scheme", f"redirect to {newurl!r}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects())


def _fetch(url: str, config: DownloadConfig) -> bytes:
    if not url.lower().startswith(("http://", "https://")):
        raise _Failure("unsupported_scheme", url.split(":", 1)[0])
    deadline = time.monotonic() + config.timeout
    request = urllib.request.Request(url, headers={"User-Agent": config.user_agent})
    try:
        with _OPENER.open(request, timeout=config.timeout) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > config.max_bytes:
                raise _Failure("too_large", f"Content-Length {length}")
            chunks, size = [], 0
            while chunk := response.read(65536):
                size += len(chunk)
                if size > config.max_bytes:
                    raise _Failure("too_large", f"> {config.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise _Failure("timeout", f"body not complete after {config.timeout}s")
                chunks.append(chunk)
            # http.client's read(n) returns short at EOF instead of raising IncompleteRead.
            if length and length.isdigit() and size < int(length):
                raise _Failure("truncated", f"{size} bytes of {length}")
            return b"".join(chunks)
    except _Failure:
        raise
    except urllib.error.HTTPError as err:
        raise _Failure("http_error", f"HTTP {err.code}") from None
    except IncompleteRead as err:
        raise _Failure("truncated", f"{len(err.partial)} bytes of {err.expected + len(err.partial)}") from None
    except (TimeoutError, socket.timeout):
        raise _Failure("timeout", f"> {config.timeout}s") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, (TimeoutError, socket.timeout)):
            raise _Failure("timeout", f"> {config.timeout}s") from None
        raise _Failure("network_error", str(err.reason)) from None
    except (HTTPException, OSError, ValueError) as err:
        raise _Failure("network_error", f"{type(err).__name__}: {err}") from None


def _process_image(data: bytes, config: DownloadConfig) -> tuple[bytes, dict]:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise _Failure("not_an_image", data[:40].decode("latin-1", "replace")) from None
    except Image.DecompressionBombError as err:
        raise _Failure("decompression_bomb", str(err)) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise _Failure("decode_error", str(err)) from None
    width, height = image.size
    if width * height > config.max_pixels:
        raise _Failure("decompression_bomb", f"{width}x{height} > {config.max_pixels} pixels")
    if min(width, height) <= config.min_side:
        raise _Failure("too_small", f"{width}x{height}")
    if max(width, height) / min(width, height) > config.max_aspect_ratio:
        raise _Failure("bad_aspect_ratio", f"{width}x{height}")
    scale = config.image_size / min(width, height)
    target = (max(1, round(width * scale)), max(1, round(height * scale))) if scale < 1 else (width, height)
    try:
        image.draft("RGB", target)  # JPEG: decode at reduced scale, much faster for large sources
        image = image.convert("RGB")
        if image.size != target:
            image = image.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
    except Image.DecompressionBombError as err:
        raise _Failure("decompression_bomb", str(err)) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise _Failure("decode_error", str(err)) from None
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=config.jpeg_quality)
    return out.getvalue(), {"width": target[0], "height": target[1], "original_width": width, "original_height": height}


def fetch_and_process(url: str, config: DownloadConfig) -> tuple[bytes | None, dict]:
    """One URL -> (resized JPEG bytes, info) or (None, {"status": reason, "error": detail}). Never raises for bad input."""
    try:
        jpeg, info = _process_image(_fetch(url, config), config)
    except _Failure as failure:
        return None, {"status": failure.reason, "error": str(failure)}
    return jpeg, {"status": "success", "error": "", **info}


def _shard_paths(out_dir: str, shard: int) -> dict[str, str]:
    stem = os.path.join(out_dir, f"{shard:05d}")
    return {"tar": stem + ".tar", "parquet": stem + ".parquet", "stats": stem + "_stats.json"}


def _download_shard(shard: int, rows: list[dict], out_dir: str, config: DownloadConfig) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    paths = _shard_paths(out_dir, shard)
    digits = len(str(config.shard_size - 1))
    failures: Counter = Counter()
    records = []
    start = time.monotonic()
    with ThreadPoolExecutor(config.threads) as pool, open(paths["tar"] + ".tmp", "wb") as fh:
        writer = wds.TarWriter(fh)
        results = pool.map(lambda row: fetch_and_process(row["url"], config), rows)
        for index, (row, (jpeg, info)) in enumerate(zip(rows, results)):
            key = f"{shard:05d}{index:0{digits}d}"
            meta = {"key": key, "url": row["url"], "caption": row["caption"],
                    "source_file": row.get("source_file", ""), "source_row": row.get("source_row", -1), **info}
            records.append({k: meta.get(k) for k in ("key", "url", "caption", "status", "error", "source_file", "source_row")})
            if jpeg is None:
                failures[info["status"]] += 1
                continue
            writer.write({"__key__": key, "jpg": jpeg, "txt": row["caption"], "json": meta})
        writer.close()
    pq.write_table(pa.Table.from_pylist(records), paths["parquet"] + ".tmp")
    stats = {"shard": shard, "total": len(rows), "kept": len(rows) - sum(failures.values()),
             "failures": dict(failures), "seconds": round(time.monotonic() - start, 3)}
    os.replace(paths["tar"] + ".tmp", paths["tar"])
    os.replace(paths["parquet"] + ".tmp", paths["parquet"])
    with open(paths["stats"] + ".tmp", "w") as fh:
        json.dump(stats, fh)
    os.replace(paths["stats"] + ".tmp", paths["stats"])  # written last: marks the shard complete
    return stats


def _shards(rows: Iterable[dict], shard_size: int) -> Iterator[tuple[int, list[dict]]]:
    iterator = iter(rows)
    shard = 0
    while batch := list(islice(iterator, shard_size)):
        yield shard, batch
        shard += 1


def download_images(
    rows: Iterable[dict],
    out_dir: str | os.PathLike,
    config: DownloadConfig | None = None,
    *,
    progress: bool = True,
) -> DownloadReport:
    """Rows {url, caption, [source_file, source_row]} -> out_dir/NNNNN.tar shards + stats; returns the report.

    Rerunning on the same rows and out_dir resumes: complete shards are skipped, incomplete ones redone.
    Writes out_dir/download_report.json (every URL accounted for: kept + each failure reason = total).
    """
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    config = config or DownloadConfig()
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    report = DownloadReport()
    start = time.monotonic()
    bar = tqdm(unit="url", desc="download", disable=not progress)

    def finish(stats: dict) -> None:
        report.merge_stats(stats)
        report.shards_written += 1
        bar.update(stats["total"])
        bar.set_postfix(kept=f"{report.kept / max(report.total, 1):.0%}")

    pool = ProcessPoolExecutor(config.processes) if config.processes > 1 else None
    pending = []
    try:
        for shard, batch in _shards(rows, config.shard_size):
            paths = _shard_paths(out_dir, shard)
            if os.path.exists(paths["stats"]):
                with open(paths["stats"]) as fh:
                    stats = json.load(fh)
                if stats["total"] != len(batch):
                    raise ValueError(f"{paths['stats']} records {stats['total']} rows but the input gives {len(batch)} for shard {shard}: resume with the same input and --shard-size, or use a new output folder")
                report.merge_stats(stats)
                report.shards_skipped += 1
                bar.update(stats["total"])
                continue
            if pool is None:
                finish(_download_shard(shard, batch, out_dir, config))
                continue
            pending.append(pool.submit(_download_shard, shard, batch, out_dir, config))
            while len(pending) >= 2 * config.processes:  # bounded: at most 2 shards of rows queued per process
                finish(pending.pop(0).result())
        for future in pending:
            finish(future.result())
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        bar.close()
    report.seconds = time.monotonic() - start
    with open(os.path.join(out_dir, "download_report.json"), "w") as fh:
        json.dump(report.as_dict(), fh, indent=2)
    return report
