"""Reader for the Wukong 100M release: 256 CSV files (url,caption) or the 32-shard Parquet mirror.

Rows come out as dicts {url, caption, source_file, source_row}. Broken rows are skipped and counted
per reason in a `ReadReport`; they never stop the read.
"""

from __future__ import annotations

import csv
import glob
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = [
    "BROKEN_ROW_REASONS",
    "ReadReport",
    "convert_release",
    "write_rows_parquet",
    "expand_release_paths",
    "iter_release_rows",
    "release_stream",
]

BROKEN_ROW_REASONS = ("wrong_field_count", "empty_url", "empty_caption", "unbalanced_quote")
# A caption spanning more lines than this is an unterminated quote, not a real multi-line caption.
MAX_LINES_PER_RECORD = 16


@dataclass
class ReadReport:
    """Counts of a release read: rows read, rows skipped per reason, rows decoded from a non-UTF-8 encoding."""

    rows: int = 0
    broken: Counter = field(default_factory=Counter)
    non_utf8_rows: int = 0
    files: int = 0
    examples: list[str] = field(default_factory=list)

    def add_broken(self, reason: str, where: str) -> None:
        self.broken[reason] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{where}: {reason}")

    def merge(self, other: ReadReport) -> None:
        self.rows += other.rows
        self.broken.update(other.broken)
        self.non_utf8_rows += other.non_utf8_rows
        self.files += other.files
        self.examples.extend(other.examples[: max(0, 20 - len(self.examples))])

    def as_dict(self) -> dict:
        return {
            "files": self.files,
            "rows_read": self.rows,
            "rows_broken": sum(self.broken.values()),
            "broken_by_reason": dict(self.broken),
            "rows_decoded_from_gb18030": self.non_utf8_rows,
            "broken_examples": self.examples,
        }


def expand_release_paths(paths: str | os.PathLike | list) -> list[str]:
    """Files of the release: CSV/Parquet files, folders holding them, or glob patterns -> sorted file list."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[str] = []
    for item in items:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = sorted(glob.glob(os.path.join(item, "*.csv")) + glob.glob(os.path.join(item, "*.parquet")))
        elif any(ch in item for ch in "*?["):
            found = sorted(glob.glob(item))
        elif os.path.isfile(item):
            found = [item]
        else:
            raise FileNotFoundError(f"release file or folder {item!r} does not exist; pass the wukong_100m_*.csv files, their folder, or a glob")
        if not found:
            raise FileNotFoundError(f"no .csv or .parquet files in {item!r}; pass the folder that holds wukong_100m_*.csv")
        files.extend(found)
    for f in files:
        if not f.endswith((".csv", ".parquet")):
            raise ValueError(f"{f!r} is neither .csv nor .parquet; the release reader reads only those")
    return files


def _decode_line(raw: bytes, report: ReadReport) -> str:
    # The release is UTF-8, but a few rows carry GBK bytes: decode those rather than drop them.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        report.non_utf8_rows += 1
        return raw.decode("gb18030", errors="replace")


def _csv_records(path: str, report: ReadReport) -> Iterator[tuple[int, str]]:
    """(first line number, record text) for each CSV record; unbalanced quotes are cut off and reported."""
    # Hand-written record splitting: csv.reader cannot resynchronise after an unterminated quote, so one
    # bad row would swallow the rest of a 400K-row file. Memory: at most MAX_LINES_PER_RECORD lines.
    from collections import deque

    name = os.path.basename(path)
    with open(path, "rb") as fh:
        numbered = ((i + 1, _decode_line(raw, report)) for i, raw in enumerate(fh))
        pending: deque = deque()
        while True:
            if not pending:
                first = next(numbered, None)
                if first is None:
                    return
                pending.append(first)
            start, text = pending[0]
            used = 1
            while text.count('"') % 2 and used < MAX_LINES_PER_RECORD:
                if used == len(pending):
                    more = next(numbered, None)
                    if more is None:
                        break
                    pending.append(more)
                text += pending[used][1]
                used += 1
            if text.count('"') % 2:
                report.add_broken("unbalanced_quote", f"{name}:{start}")
                pending.popleft()  # drop only the opening line and rescan what followed it
                continue
            for _ in range(used):
                pending.popleft()
            yield start, text


def _iter_csv(path: str, report: ReadReport) -> Iterator[dict]:
    name = os.path.basename(path)
    for line_no, text in _csv_records(path, report):
        if not text.strip():
            continue
        row = next(csv.reader([text.rstrip("\r\n")]))
        if line_no == 1 and [c.strip().lower() for c in row] == ["url", "caption"]:
            continue
        if len(row) != 2:
            report.add_broken("wrong_field_count", f"{name}:{line_no}")
            continue
        url, caption = row[0].strip(), row[1].strip()
        if not url:
            report.add_broken("empty_url", f"{name}:{line_no}")
            continue
        if not caption:
            report.add_broken("empty_caption", f"{name}:{line_no}")
            continue
        report.rows += 1
        yield {"url": url, "caption": caption, "source_file": name, "source_row": line_no}


def _iter_parquet(path: str, report: ReadReport) -> Iterator[dict]:
    import pyarrow.parquet as pq

    name = os.path.basename(path)
    pf = pq.ParquetFile(path)
    missing = {"url", "caption"} - set(pf.schema_arrow.names)
    if missing:
        raise ValueError(f"{path!r} lacks column(s) {sorted(missing)}; the Wukong Parquet mirror has url and caption")
    # A filtered table written by `wukong data filter` keeps the provenance of the original release row.
    has_source = {"source_file", "source_row"} <= set(pf.schema_arrow.names)
    columns = ["url", "caption"] + (["source_file", "source_row"] if has_source else [])
    row_no = 0
    for batch in pf.iter_batches(columns=columns, batch_size=65536):
        data = [batch.column(i).to_pylist() for i in range(len(columns))]
        for values in zip(*data):
            row_no += 1
            url, caption = (values[0] or "").strip(), (values[1] or "").strip()
            if not url:
                report.add_broken("empty_url", f"{name}:{row_no}")
            elif not caption:
                report.add_broken("empty_caption", f"{name}:{row_no}")
            else:
                report.rows += 1
                source = (values[2], values[3]) if has_source else (name, row_no)
                yield {"url": url, "caption": caption, "source_file": source[0], "source_row": source[1]}


def iter_release_rows(paths: str | os.PathLike | list, report: ReadReport | None = None) -> Iterator[dict]:
    """Stream {url, caption, source_file, source_row} from release CSV/Parquet files, in file order.

    `source_row` is the 1-based line of the record's first line (CSV) or the row index (Parquet).
    Broken rows are skipped and counted in `report` (pass one in to read the counts afterwards).
    """
    report = report if report is not None else ReadReport()
    for path in expand_release_paths(paths):
        report.files += 1
        yield from (_iter_parquet if path.endswith(".parquet") else _iter_csv)(path, report)


def _generate(files: list[str]) -> Iterator[dict]:
    import logging

    for path in files:
        report = ReadReport()
        yield from iter_release_rows([path], report)
        if report.broken:
            logging.getLogger(__name__).warning("%s: skipped %d broken rows %s", path, sum(report.broken.values()), dict(report.broken))


def release_stream(paths: str | os.PathLike | list):
    """The release as a streaming `datasets.IterableDataset` (columns url, caption, source_file, source_row).

    One datasets shard per file, so `split_dataset_by_node` and DataLoader workers split by file.
    Broken rows are skipped and logged per file; use `iter_release_rows` with a report to count them.
    """
    from datasets import Features, IterableDataset, Value

    features = Features({"url": Value("string"), "caption": Value("string"), "source_file": Value("string"), "source_row": Value("int64")})
    return IterableDataset.from_generator(_generate, gen_kwargs={"files": expand_release_paths(paths)}, features=features)


def write_rows_parquet(rows, out_dir: str | os.PathLike, *, prefix: str = "pairs", rows_per_file: int = 1_000_000,
                       progress: bool = True, desc: str = "rows") -> list[str]:
    """Rows {url, caption, source_file, source_row} -> out_dir/PREFIX-NNNNN.parquet files; returns their paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    schema = pa.schema([("url", pa.string()), ("caption", pa.string()), ("source_file", pa.string()), ("source_row", pa.int64())])
    os.makedirs(out_dir, exist_ok=True)
    written: list[str] = []
    batch: list[dict] = []

    def flush() -> None:
        path = os.path.join(os.fspath(out_dir), f"{prefix}-{len(written):05d}.parquet")
        pq.write_table(pa.Table.from_pylist(batch, schema=schema), path)
        written.append(path)
        batch.clear()

    for row in tqdm(rows, desc=desc, unit="row", disable=not progress):
        batch.append(row)
        if len(batch) >= rows_per_file:
            flush()
    if batch or not written:
        flush()
    return written


def convert_release(paths, out_dir: str | os.PathLike, *, rows_per_file: int = 1_000_000, progress: bool = True) -> ReadReport:
    """Release CSV/Parquet -> out_dir/pairs-NNNNN.parquet (url, caption, source_file, source_row) + read_report.json."""
    import json

    report = ReadReport()
    write_rows_parquet(iter_release_rows(paths, report), out_dir, rows_per_file=rows_per_file, progress=progress, desc="read")
    with open(os.path.join(out_dir, "read_report.json"), "w") as fh:
        json.dump(report.as_dict(), fh, indent=2, ensure_ascii=False)
    return report
