"""The `wukong` command: help lists the subcommands; presets and score run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import random_images

from wukong_hf.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_the_subcommands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "presets" in out and "score" in out


def test_presets_lists_released_and_paper_variants(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "wukong-vit-l-14 " in out and "paper-swin-l-token-wise" in out


def test_score_prints_probabilities_per_image(tmp_path, capsys):
    path = tmp_path / "a.png"
    random_images(1)[0].save(path)
    assert main(["score", "--images", str(path), "--captions", "红色圆形", "蓝色方形"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert abs(sum(result[str(path)].values()) - 1) < 1e-5


def test_score_reports_bad_preset_as_an_error(tmp_path, capsys):
    path = tmp_path / "a.png"
    random_images(1)[0].save(path)
    assert main(["score", "--preset", "nope", "--images", str(path), "--captions", "猫"]) == 2
    assert "Unknown preset 'nope'" in capsys.readouterr().err


def test_quickstart_example_runs():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tiny-token-wise (token_wise similarity" in result.stdout and "蓝色背景上的一个红色圆形" in result.stdout


def _leaf_parsers(parser, path=("wukong",)):
    """(command path, parser) of every subcommand that runs something, e.g. ("wukong", "eval", "zero-shot")."""
    import argparse

    subactions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subactions:
        yield path, parser
    for action in subactions:
        for name, sub in action.choices.items():
            yield from _leaf_parsers(sub, (*path, name))


def test_version_prints_the_installed_package_version():
    from importlib.metadata import version

    run = subprocess.run([sys.executable, "-m", "wukong_hf.cli", "--version"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == f"wukong-hf {version('wukong-hf')}"


def test_every_subcommand_help_shows_its_defaults(capsys):
    import argparse

    from wukong_hf.cli import build_parser

    leaves = list(_leaf_parsers(build_parser()))
    assert len(leaves) >= 17  # presets, score, data x7, eval x3, train, convert x3, push, demo, visualize
    checked = 0
    for path, parser in leaves:
        formatter = parser._get_formatter()
        for action in parser._actions:
            skip = (argparse._HelpAction, argparse._VersionAction, argparse._StoreTrueAction, argparse._StoreFalseAction)
            if isinstance(action, skip) or action.default in (None, argparse.SUPPRESS, []):
                continue
            shown = " ".join(formatter._format_action(action).split())
            if "default" not in (action.help or ""):  # help that states its default in words keeps them
                assert f"(default: {action.default})" in shown, (" ".join(path), shown)
            assert "default" in shown, (" ".join(path), shown)
            checked += 1
        with pytest.raises(SystemExit):
            main([*path[1:], "--help"])
        assert "--debug" in capsys.readouterr().out
    assert checked > 30


def test_output_flag_is_out_everywhere_and_the_old_output_still_works(tmp_path, capsys):
    from wukong_hf.cli import build_parser

    for path, parser in _leaf_parsers(build_parser()):
        help_text = parser.format_help()
        assert "--output" not in help_text, " ".join(path)  # one documented spelling
        if "--out" in parser._option_string_actions and path[1] not in ("demo", "visualize"):  # demo.py: its own flags
            assert parser._option_string_actions["--output"] is parser._option_string_actions["--out"], " ".join(path)

    from PIL import Image

    for colour, rgb in (("红色", (220, 20, 20)), ("蓝色", (20, 20, 220))):
        (tmp_path / "images" / colour).mkdir(parents=True)
        Image.new("RGB", (24, 24), rgb).save(tmp_path / "images" / colour / "0.png")
    for flag in ("--out", "--output"):
        out = tmp_path / flag.strip("-")
        assert main(["eval", "zero-shot", "--image-folder", str(tmp_path / "images"), "--templates", "none",
                     "--preset", "tiny-global", flag, str(out)]) == 0
        assert json.loads((out / "results.json").read_text())["num_images"] == 2
        err = capsys.readouterr().err
        assert ("--output is deprecated; use --out" in err) == (flag == "--output")
