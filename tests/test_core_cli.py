"""The `wukong` command: help lists the subcommands; presets and score run."""

import json
import subprocess
import sys
from pathlib import Path

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
