"""The JSON reports the `wukong data` steps write beside their output, gathered for `wukong data report`."""

from __future__ import annotations

import json
import os

__all__ = ["REPORT_FILES", "collect_reports"]

REPORT_FILES = ("read_report.json", "filter_report.json", "download_report.json", "count_report.json")


def collect_reports(folders: list[str]) -> dict:
    """{folder/report file: report dict} for every known report JSON found in the folders.

    Raises FileNotFoundError when a folder does not exist or none of them holds a report.
    """
    found = {}
    for folder in folders:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder!r} is not a folder; pass output folders of `wukong data` steps")
        for name in REPORT_FILES:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                with open(path) as fh:
                    found[path] = json.load(fh)
    if not found:
        raise FileNotFoundError(f"no report files ({', '.join(REPORT_FILES)}) in {folders}")
    return found
