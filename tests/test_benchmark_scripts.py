"""The speed benchmarks run at tiny size, so they do not rot (no timing is asserted), and the opt-in
ONNX Runtime path keeps the demo's zero-shot top-1 and R@1 within 0.5 points of PyTorch."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from wukong_hf.onnx_encoder import onnx_available

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_script(name: str, args: list[str], monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *args])
    module.main()


def test_gpu_check_runs_at_tiny_size_on_cpu(tmp_path, monkeypatch):
    out = tmp_path / "gpu.json"
    run_script("gpu_check", ["--tiny", "--out", str(out)], monkeypatch)
    result = json.loads(out.read_text())
    sections = result["sections"]
    assert set(sections) == {"train_step_ours", "train_step_chinese_clip", "token_wise_loss_tiled_b64",
                             "token_wise_loss_naive_b64", "retrieval_20x100"}
    assert sections["train_step_ours"]["samples_per_s"] > 0 and sections["train_step_chinese_clip"]["samples_per_s"] > 0
    assert sections["token_wise_loss_tiled_b64"]["seconds"] > 0 and sections["retrieval_20x100"]["seconds"] > 0


def test_gpu_check_stops_starting_sections_when_the_budget_is_spent(tmp_path, monkeypatch):
    out = tmp_path / "gpu.json"
    run_script("gpu_check", ["--tiny", "--budget-s", "0", "--out", str(out)], monkeypatch)
    assert set(json.loads(out.read_text())["sections"].values()) == {"skipped: time budget"}


def test_cpu_inference_benchmark_runs_and_the_exact_paths_keep_the_scores(tmp_path, monkeypatch):
    out = tmp_path / "cpu.json"
    run_script("cpu_inference", ["--tiny", "--rounds", "1", "--skip", "onnx,int8,bf16,layout", "--out", str(out)],
               monkeypatch)
    result = json.loads(out.read_text())
    assert {"ChineseCLIPModel", "wukong encode_images (exact default)"} <= set(result["images_per_s"])
    for rows in result["captions_per_s"].values():
        assert rows["wukong encode_texts (sorted, exact default)"]["per_s"] > 0
    exact = {k: v for k, v in result["score_checks"].items() if "exact default" in k}
    assert len(exact) == 2 and all(v < 1e-4 for check in exact.values() for v in check.values())


@pytest.mark.skipif(not onnx_available(), reason="needs the onnx extra")
def test_onnx_runtime_keeps_demo_accuracy_within_half_a_point(tmp_path, monkeypatch):
    out = tmp_path / "acc.json"
    run_script("fast_path_accuracy", ["--tiny", "--skip", "int8,bf16", "--out", str(out)], monkeypatch)
    rows = json.loads(out.read_text())["rows"]
    onnx = rows["ONNX Runtime fp32"]
    for metric in ("zero_shot_top1", "i2t_R@1", "t2i_R@1"):
        assert abs(onnx[f"delta_{metric}"]) <= 0.5
    assert rows["PyTorch fp32 (reference)"]["delta_zero_shot_top1"] == 0


@pytest.mark.slow
def test_zero_shot_cache_benchmark_runs(tmp_path):
    import subprocess

    out = tmp_path / "zs.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "zero_shot_cache.py"), "--tiny", "--out", str(out)], check=True,
                   capture_output=True)
    result = json.loads(out.read_text())
    rerun = result["runs"]["rerun, new images (cache)"]
    assert rerun["text_cache"]["hits"] == 2 and rerun["text_cache"]["misses"] == 0


def test_pipeline_speed_benchmark_runs_and_the_memo_keeps_the_scores(tmp_path, monkeypatch):
    out = tmp_path / "pipeline.json"
    run_script("pipeline_speed", ["--tiny", "--rounds", "1", "--out", str(out)], monkeypatch)
    result = json.loads(out.read_text())
    rows = result["images_per_s"]
    assert {"ChineseCLIPModel", "wukong, text feature memo on (default)", "wukong, text feature memo off"} == set(rows)
    assert all(row["per_s"] > 0 for row in rows.values())
    for check in result["exact_checks"].values():
        assert check["memo_on_equals_off_exactly"] and check["memo_hits"] == check["images"] - 1
