"""`wukong data <step>`: read, count-captions, filter, download, prepare, push, report. Parse arguments, call the library."""

from __future__ import annotations

import glob
import json
import os

from ..cli import add_output_argument

__all__ = ["register"]


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def _cmd_read(args) -> int:
    from .release import convert_release

    _print(convert_release(args.release, args.out, rows_per_file=args.rows_per_file).as_dict())
    return 0


def _cmd_count(args) -> int:
    from .caption_counts import count_caption_hashes, merge_caption_counts
    from .release import expand_release_paths, iter_release_rows

    if args.merge:
        stats = merge_caption_counts(args.out, max_occurrences=args.max_occurrences)
        with open(os.path.join(args.out, "count_report.json"), "w") as fh:
            json.dump(stats, fh, indent=2)
        _print(stats)
        return 0
    if not args.table:
        raise ValueError("pass the table files to count, or --merge to merge the counts already in --out")
    files = expand_release_paths(args.table)[args.worker :: args.num_workers]
    rows = (row["caption"] for row in iter_release_rows(files))
    n = count_caption_hashes(rows, args.out, worker=args.worker, num_partitions=args.partitions)
    print(f"worker {args.worker}: hashed {n} captions from {len(files)} files into {args.out}")
    return 0


def _cmd_filter(args) -> int:
    from .text_filters import TextFilterConfig, filter_table, load_sensitive_words

    config = TextFilterConfig(
        drop_meaningless=not args.keep_meaningless,
        check_word_count=not args.no_word_count,
        max_occurrences=None if args.no_frequent else 10,
        mask_names=not args.no_names,
        name_masker=args.name_masker,
        sensitive_words=load_sensitive_words(args.sensitive_words) if args.sensitive_words else None,
    )
    _print(filter_table(args.table, args.out, config, counts_dir=args.counts).as_dict())
    return 0


def _cmd_download(args) -> int:
    from .download import DownloadConfig, download_images
    from .release import ReadReport, iter_release_rows

    config = DownloadConfig(image_size=args.image_size, timeout=args.timeout, max_bytes=args.max_bytes,
                            shard_size=args.shard_size, threads=args.threads, processes=args.processes)
    read_report = ReadReport()
    report = download_images(iter_release_rows(args.table, read_report), args.out, config)
    _print(report.as_dict())
    return 0


def _cmd_prepare(args) -> int:
    from .repository import CARD_TEMPLATE, prepare_dataset_repo

    pairs = sorted(p for pattern in (args.pairs or []) for p in (glob.glob(os.path.join(pattern, "*.parquet")) if os.path.isdir(pattern) else glob.glob(pattern)))
    if args.pairs and not pairs:
        raise FileNotFoundError(f"no Parquet files at {args.pairs}; pass the --out folder of `wukong data filter` or its .parquet files")
    filter_report = next((os.path.join(p, "filter_report.json") for p in (args.pairs or []) if os.path.isdir(p)), None)
    _print(prepare_dataset_repo(args.out, pairs=pairs, shards_dir=args.shards, filter_report=filter_report,
                                card_template=args.card_template or CARD_TEMPLATE))
    return 0


def _cmd_push(args) -> int:
    from huggingface_hub.errors import HTTPError, OfflineModeIsEnabled

    from .repository import push_dataset_repo

    try:
        files = push_dataset_repo(args.folder, args.repo_id, private=not args.public, dry_run=args.dry_run, token=args.token)
    except (HTTPError, OfflineModeIsEnabled) as err:  # the one-line message then names the repository
        err.add_note(f"upload to the Hub dataset repository {args.repo_id}")
        raise
    print("\n".join(files))
    return 0


def _cmd_report(args) -> int:
    from .step_reports import collect_reports

    _print(collect_reports(args.folders))
    return 0


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="Wukong 100M: read the release, filter, download, prepare, push")
    steps = data.add_subparsers(dest="data_command", metavar="STEP", required=True)

    p = steps.add_parser("read", help="release CSVs/Parquet -> Parquet table + read_report.json (broken rows counted)")
    p.add_argument("release", nargs="+", help="wukong_100m_*.csv / mirror .parquet files, their folder, or a glob")
    add_output_argument(p, required=True, help="folder for the Parquet table and read_report.json")
    p.add_argument("--rows-per-file", type=int, default=1_000_000, help="rows per Parquet file")
    p.set_defaults(func=_cmd_read)

    p = steps.add_parser("count-captions", help="corpus-wide caption counts: run per worker, then once with --merge")
    p.add_argument("table", nargs="*", help="release or table files (this worker takes every num-workers-th file)")
    add_output_argument(p, required=True, help="counts folder shared by all workers")
    p.add_argument("--worker", type=int, default=0, help="this worker's index, 0 .. num-workers - 1")
    p.add_argument("--num-workers", type=int, default=1, help="how many workers share the files")
    p.add_argument("--partitions", type=int, default=64, help="hash partitions of the counts (same for every worker)")
    p.add_argument("--merge", action="store_true", help="merge all workers' counts into frequent_hashes.npy")
    p.add_argument("--max-occurrences", type=int, default=10, help="with --merge: captions seen more often are frequent")
    p.set_defaults(func=_cmd_count)

    p = steps.add_parser("filter", help="the paper's caption filters -> Parquet table + filter_report.json")
    p.add_argument("table", nargs="+", help="Parquet tables from `wukong data read`")
    add_output_argument(p, required=True, help="folder for the filtered Parquet table and filter_report.json")
    p.add_argument("--counts", help="folder from `count-captions --merge` (needed unless --no-frequent)")
    p.add_argument("--keep-meaningless", action="store_true", help="switch off the meaningless-caption filter")
    p.add_argument("--no-word-count", action="store_true", help="switch off the 1..31 jieba words filter")
    p.add_argument("--no-frequent", action="store_true", help="switch off the > 10 occurrences filter")
    p.add_argument("--no-names", action="store_true", help="do not replace person names with <人名>")
    p.add_argument("--name-masker", choices=("tagger", "fast", "posseg"), default="tagger",
                   help="tagger: LAC (the neural tagger bundled with jieba) and jieba.posseg propose names, a classifier "
                        "fitted on labelled captions keeps them (default; precision 0.98 on captions it never saw); fast: "
                        "rules over jieba's dictionary (about 20x faster, less precise, misses more names); posseg: every "
                        "jieba.posseg token tagged nr (the baseline)")
    p.add_argument("--sensitive-words", help="UTF-8 file, one word per line (none is bundled)")
    p.set_defaults(func=_cmd_filter)

    p = steps.add_parser("download", help="URL table -> WebDataset shards with the paper's image filter (resumable)")
    p.add_argument("table", nargs="+", help="URL tables (release CSVs or Parquet from read/filter)")
    add_output_argument(p, required=True, help="folder for the WebDataset shards and download_report.json")
    p.add_argument("--shard-size", type=int, default=10_000, help="images per .tar shard")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="download processes (default: the CPU count)")
    p.add_argument("--threads", type=int, default=32, help="concurrent requests per process")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per image, body included")
    p.add_argument("--max-bytes", type=int, default=16 * 1024 * 1024, help="largest image body accepted, in bytes")
    p.add_argument("--image-size", type=int, default=256, help="shorter side after resize")
    p.set_defaults(func=_cmd_download)

    p = steps.add_parser("prepare", help="dataset repository folder (card + configs) for load_dataset")
    add_output_argument(p, required=True, help="dataset repository folder (card, configs, data files)")
    p.add_argument("--pairs", nargs="*", help="Parquet files or folders from `wukong data filter`")
    p.add_argument("--shards", help="folder from `wukong data download`")
    p.add_argument("--card-template", help="default: dataset_scripts/wukong/README.md")
    p.set_defaults(func=_cmd_prepare)

    p = steps.add_parser("push", help="upload a prepared folder to a PRIVATE Hub dataset repo (licence warning shown)")
    p.add_argument("folder", help="folder from `wukong data prepare`")
    p.add_argument("--repo-id", required=True, help="org/name of the dataset repository")
    p.add_argument("--public", action="store_true", help="make the repo public (the Wukong terms forbid redistribution)")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    p.add_argument("--token", help="Hub token (default: the logged-in one)")
    p.set_defaults(func=_cmd_push)

    p = steps.add_parser("report", help="print the reports of earlier steps")
    p.add_argument("folders", nargs="+", help="output folders of earlier `wukong data` steps")
    p.set_defaults(func=_cmd_report)
