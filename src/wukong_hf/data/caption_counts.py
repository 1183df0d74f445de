"""Corpus-wide caption counts in bounded memory, split across processes and merged.

Why hash partitions on disk rather than a count-min sketch: the result must be exact (the paper drops
captions seen more than 10 times), and a sketch only over-estimates. Pass 1 (`count_caption_hashes`,
any number of processes, each over its own files) appends a 64-bit hash of every caption to one of
P partition files by hash % P. Pass 2 (`merge_caption_counts`) loads one partition at a time from all
processes (about 8 bytes x rows / P: 13 MB for 101M rows and P = 64), counts with numpy and keeps the
hashes over the limit. Exact up to 64-bit hash collisions (expected < 0.001 colliding pairs at 101M).
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable

import numpy as np

__all__ = ["caption_hash", "count_caption_hashes", "merge_caption_counts", "load_frequent_hashes"]

FREQUENT_FILE = "frequent_hashes.npy"


def caption_hash(caption: str) -> int:
    """64-bit hash of a whitespace-stripped caption (stable across processes, unlike hash())."""
    return int.from_bytes(hashlib.blake2b(caption.strip().encode("utf-8"), digest_size=8).digest(), "little")


def count_caption_hashes(
    captions: Iterable[str],
    out_dir: str | os.PathLike,
    *,
    worker: int = 0,
    num_partitions: int = 64,
    flush_every: int = 1_000_000,
) -> int:
    """Pass 1: hash every caption into out_dir/part-PPP/worker-WWWWW-CCCCC.npy. Returns the number of captions.

    Memory: `flush_every` x 8 bytes. Run one call per process with a distinct `worker`.
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    out_dir = os.fspath(out_dir)
    for p in range(num_partitions):
        os.makedirs(os.path.join(out_dir, f"part-{p:03d}"), exist_ok=True)
    for stale in glob.glob(os.path.join(out_dir, "part-*", f"worker-{worker:05d}-*.npy")):
        os.remove(stale)  # a rerun of this worker replaces its earlier output instead of double counting
    buffer: list[int] = []
    total = 0
    chunk = 0

    def flush() -> None:
        nonlocal chunk
        hashes = np.fromiter(buffer, dtype=np.uint64, count=len(buffer))
        parts = hashes % np.uint64(num_partitions)
        for p in range(num_partitions):
            np.save(os.path.join(out_dir, f"part-{p:03d}", f"worker-{worker:05d}-{chunk:05d}.npy"), hashes[parts == p])
        chunk += 1
        buffer.clear()

    for caption in captions:
        buffer.append(caption_hash(caption))
        total += 1
        if len(buffer) >= flush_every:
            flush()
    if buffer or chunk == 0:
        flush()
    return total


def merge_caption_counts(out_dir: str | os.PathLike, max_occurrences: int = 10) -> dict:
    """Pass 2: count each partition exactly; write out_dir/frequent_hashes.npy (hashes seen > max_occurrences).

    Returns {"captions", "unique_captions", "frequent_captions", "rows_in_frequent_captions"}.
    """
    out_dir = os.fspath(out_dir)
    parts = sorted(glob.glob(os.path.join(out_dir, "part-*")))
    if not parts:
        raise FileNotFoundError(f"no part-* folders in {out_dir!r}; run count_caption_hashes (wukong data count-captions) first")
    frequent, stats = [], {"captions": 0, "unique_captions": 0, "frequent_captions": 0, "rows_in_frequent_captions": 0}
    for part in parts:
        files = sorted(glob.glob(os.path.join(part, "*.npy")))
        if not files:
            continue
        hashes = np.concatenate([np.load(f, allow_pickle=False) for f in files])
        values, counts = np.unique(hashes, return_counts=True)
        over = counts > max_occurrences
        frequent.append(values[over])
        stats["captions"] += int(hashes.size)
        stats["unique_captions"] += int(values.size)
        stats["frequent_captions"] += int(over.sum())
        stats["rows_in_frequent_captions"] += int(counts[over].sum())
    np.save(os.path.join(out_dir, FREQUENT_FILE), np.sort(np.concatenate(frequent)) if frequent else np.zeros(0, np.uint64))
    return stats


def load_frequent_hashes(out_dir_or_file: str | os.PathLike) -> set[int]:
    """The set of frequent caption hashes written by `merge_caption_counts`."""
    path = os.fspath(out_dir_or_file)
    if os.path.isdir(path):
        path = os.path.join(path, FREQUENT_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} does not exist; run merge_caption_counts (wukong data count-captions --merge) first")
    return set(np.load(path, allow_pickle=False).tolist())
