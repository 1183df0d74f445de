"""`wukong data report`: the step reports gathered from output folders (wukong_hf.data.step_reports)."""

import json

import pytest

from wukong_hf.cli import main
from wukong_hf.data.step_reports import collect_reports


def test_collects_every_known_report_and_the_command_prints_them(tmp_path, capsys):
    (tmp_path / "read").mkdir()
    (tmp_path / "read" / "read_report.json").write_text(json.dumps({"rows": 3, "broken": 1}))
    (tmp_path / "filter").mkdir()
    (tmp_path / "filter" / "filter_report.json").write_text(json.dumps({"kept": 2}))
    (tmp_path / "filter" / "notes.json").write_text("{}")  # not a step report
    found = collect_reports([str(tmp_path / "read"), str(tmp_path / "filter")])
    assert found == {str(tmp_path / "read" / "read_report.json"): {"rows": 3, "broken": 1},
                     str(tmp_path / "filter" / "filter_report.json"): {"kept": 2}}
    assert main(["data", "report", str(tmp_path / "read"), str(tmp_path / "filter")]) == 0
    assert json.loads(capsys.readouterr().out) == found


def test_missing_folder_or_no_reports_is_one_line(tmp_path, capsys):
    assert main(["data", "report", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == (f"wukong data report: error: {str(tmp_path / 'nope')!r} is not a folder; pass "
                                       "output folders of `wukong data` steps\n")
    with pytest.raises(FileNotFoundError, match="no report files"):
        collect_reports([str(tmp_path)])
