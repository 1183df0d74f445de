"""benchmarks/reproduce_imagenet_cn.py runs end to end (tiny random model, generated images) so it does not rot."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "reproduce_imagenet_cn.py"


def test_smoke_run_prints_measured_reported_and_difference(tmp_path):
    out = tmp_path / "result.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| wukong-vit-b-32 | " in run.stdout
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["reported_single"] == 45.22 and rows[0]["reported_ensemble"] == 48.24
    assert rows[0]["ensemble_method"] == "probability" and rows[0]["num_images"] == 12
    assert rows[0]["difference_single"] == round(rows[0]["measured_single"] - 45.22, 2)


def test_missing_inputs_are_explained():
    run = subprocess.run([sys.executable, str(SCRIPT), "--checkpoint", "wukong-vit-b-32=/nowhere.ckpt",
                          "--imagenet", "/tmp"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "expected VARIANT=PATH with an existing file or folder" in run.stderr
