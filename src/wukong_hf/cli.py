"""`wukong` command line: one subcommand per capability. Each parses arguments and calls a library function.

Capabilities live in their own modules; each exposes `register(subparsers)` which adds its
subcommand(s) with `set_defaults(func=...)`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# One module per capability; each defines register(subparsers).
COMMAND_MODULES = [
    "wukong_hf.commands_core",  # presets, score
    "wukong_hf.data.commands",  # data ... (issue 4)
    "wukong_hf.evaluation.commands",  # eval zero-shot / retrieval (issue 5)
    "wukong_hf.training.commands",  # train (issue 6)
    "wukong_hf.convert.commands",  # convert original / chinese-clip, push (issue 7)
    "wukong_hf.demo",  # demo, visualize (issue 8)
    "wukong_hf.embed_commands",  # embed images / texts (issue 18)
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wukong",
        description="Wukong Chinese vision-language models: presets, scoring, data, training, evaluation, conversion.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"wukong {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
