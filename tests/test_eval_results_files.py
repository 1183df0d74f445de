"""Results files of `wukong eval`: the run's config and clean numbers in results.json, and the
CLIP_benchmark and Chinese-CLIP schemas read back (or recomputed) by those tools' own code."""

import csv
import hashlib
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_tiny
from PIL import Image
from test_eval_readers import write_chinese_clip

from wukong_hf.cli import main
from wukong_hf.evaluation import commands, retrieval_metrics_from_scores
from wukong_hf.evaluation.report import chinese_clip_records, write_report


def class_tree(root, classes, per_class=2, seed=0):
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / name / f"{k}.png")
    return root


def clip_benchmark_build(files, csv_path, monkeypatch) -> list[dict]:
    """CLIP_benchmark's own `clip_benchmark build FILES --output CSV`, then its CSV rows."""
    from clip_benchmark import cli

    monkeypatch.setattr(sys, "argv", ["clip_benchmark", "build", *map(str, files), "--output", str(csv_path)])
    cli.main()
    with open(csv_path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


SIX = ["猫", "狗", "鸟", "鱼", "马", "牛"]


@pytest.mark.parametrize("classes", [SIX, SIX[:3]])
def test_zero_shot_clip_benchmark_file_round_trips_through_clip_benchmark_build(tmp_path, monkeypatch, classes):
    class_tree(tmp_path / "tree", classes)
    out = tmp_path / "run"
    assert main(["eval", "zero-shot", "--preset", "tiny-global", "--image-folder", str(tmp_path / "tree"),
                 "--templates", "imagenet1k", "--dataset-name", "cifar10-cn", "--output", str(out),
                 "--results-format", "clip_benchmark"]) == 0
    result = json.loads((out / "results.json").read_text(encoding="utf-8"))
    (row,) = clip_benchmark_build([out / "clip_benchmark.json"], tmp_path / "benchmark.csv", monkeypatch)
    assert row["dataset"] == "cifar10-cn" and row["task"] == "zeroshot_classification" and row["language"] == "cn"
    assert row["model_fullname"] == "tiny-global (random init) random-init"
    ensemble = result["ensemble"]  # CLIP_benchmark evaluates with its templates: the ensemble
    assert float(row["acc1"]) == pytest.approx(ensemble["top1"] / 100, abs=1e-6)
    assert float(row["mean_per_class_recall"]) == pytest.approx(ensemble["mean_per_class_recall"] / 100, abs=1e-6)
    if len(classes) > 5:
        assert float(row["acc5"]) == pytest.approx(ensemble["top5"] / 100, abs=1e-6)
    else:  # issue 15: no top-5 = 100% with fewer classes; CLIP_benchmark itself writes NaN there
        assert "top5" not in ensemble and np.isnan(float(row["acc5"]))


def test_retrieval_clip_benchmark_file_round_trips_through_clip_benchmark_build(tmp_path, monkeypatch):
    write_chinese_clip(tmp_path / "set", split="test")
    out = tmp_path / "run"
    assert main(["eval", "retrieval", "--preset", "tiny-token-wise", "--data", str(tmp_path / "set"), "--split", "test",
                 "--name", "flickr30k-cn", "--output", str(out), "--results-format", "clip_benchmark", "chinese-clip"]) == 0
    metrics = json.loads((out / "results.json").read_text(encoding="utf-8"))["metrics"]
    (row,) = clip_benchmark_build([out / "clip_benchmark.json"], tmp_path / "benchmark.csv", monkeypatch)
    assert row["task"] == "zeroshot_retrieval" and row["dataset"] == "flickr30k-cn"
    for k in (1, 5, 10):  # CLIP_benchmark: image retrieval = text-to-image, text retrieval = image-to-text
        assert float(row[f"image_retrieval_recall@{k}"]) == pytest.approx(metrics[f"t2i_R@{k}"] / 100, abs=1e-6)
        assert float(row[f"text_retrieval_recall@{k}"]) == pytest.approx(metrics[f"i2t_R@{k}"] / 100, abs=1e-6)
    # Chinese-CLIP's output schema, exactly the keys its report_score writes
    report_score = pytest.importorskip("cn_clip.eval.evaluation").report_score

    for short, direction in (("t2i", "text_to_image"), ("i2t", "image_to_text")):
        ours = json.loads((out / "chinese-clip" / f"{direction}.json").read_text(encoding="utf-8"))
        report_score(*(metrics[f"{short}_R@{k}"] / 100 for k in (1, 5, 10)), str(tmp_path / "theirs.json"))
        theirs = json.loads((tmp_path / "theirs.json").read_text(encoding="utf-8"))
        assert ours.keys() == theirs.keys() and ours["scoreJson"].keys() == theirs["scoreJson"].keys()
        assert ours["success"] is True and ours["score"] == pytest.approx(theirs["score"], abs=1e-4)
        assert ours["scoreJson"] == pytest.approx(theirs["scoreJson"], abs=1e-4)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_chinese_clip_numbers_equal_cn_clip_evaluation_on_the_same_scores(tmp_path):
    """Chinese-CLIP scores top-10 prediction files with cn_clip/eval/evaluation.py (text-to-image) and
    evaluation_tr.py (image-to-text); fed the rankings of the same scores, its output.json equals ours."""
    pytest.importorskip("cn_clip.eval.evaluation")
    rng = np.random.default_rng(4)
    num_images = 14
    text_images = [[i] for i in range(num_images) for _ in range(4)] + [[0, 3], [5, 6, 7]]  # + MUGE-like texts
    emb_i = rng.normal(size=(num_images, 8))
    emb_t = rng.normal(size=(len(text_images), 8)) + np.stack([emb_i[imgs].mean(0) for imgs in text_images])
    t2i = emb_t @ emb_i.T  # distinct floats: no ties, where torch.topk and our rule agree
    metrics = retrieval_metrics_from_scores(torch.from_numpy(t2i.T.copy()), torch.from_numpy(t2i), text_images)
    ours = chinese_clip_records({"task": "image-text-retrieval", "metrics": metrics})
    image_ids, text_ids = [1000 + i for i in range(num_images)], [50 + j for j in range(len(text_images))]
    gold_t2i = [{"text_id": text_ids[j], "image_ids": [image_ids[i] for i in imgs]} for j, imgs in enumerate(text_images)]
    pred_t2i = [{"text_id": text_ids[j], "image_ids": [image_ids[i] for i in np.argsort(-t2i[j])[:10]]} for j in range(len(text_ids))]
    gold_i2t = [{"image_id": image_ids[i], "text_ids": [text_ids[j] for j, imgs in enumerate(text_images) if i in imgs]}
                for i in range(num_images)]
    pred_i2t = [{"image_id": image_ids[i], "text_ids": [text_ids[j] for j in np.argsort(-t2i[:, i])[:10]]} for i in range(num_images)]
    for module, gold, pred, direction in (("evaluation", gold_t2i, pred_t2i, "text_to_image"),
                                          ("evaluation_tr", gold_i2t, pred_i2t, "image_to_text")):
        out = tmp_path / f"{direction}.json"
        run = subprocess.run([sys.executable, "-m", f"cn_clip.eval.{module}", _jsonl(tmp_path / f"gold_{direction}.jsonl", gold),
                              _jsonl(tmp_path / f"pred_{direction}.jsonl", pred), str(out)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "finished successfully" in run.stdout, run.stdout + run.stderr
        theirs = json.loads(out.read_text(encoding="utf-8"))
        assert ours[direction].keys() == theirs.keys() and ours[direction]["scoreJson"].keys() == theirs["scoreJson"].keys()
        assert ours[direction]["scoreJson"] == pytest.approx(theirs["scoreJson"], abs=1e-4)
        assert 10 < theirs["scoreJson"]["r1"] < 95  # a real ranking, neither trivial nor hopeless


def test_results_json_records_the_run_with_clean_numbers(tmp_path):
    model, processor = make_tiny("tiny-global")
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    class_tree(tmp_path / "tree", SIX, per_class=3)
    (tmp_path / "templates.txt").write_text("一张{c}的照片。\n{c}的图片\n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["eval", "zero-shot", "--model", str(tmp_path / "model"), "--image-folder", str(tmp_path / "tree"),
                 "--templates", str(tmp_path / "templates.txt"), "--dataset-name", "animals", "--output", str(out)]) == 0
    text = (out / "results.json").read_text(encoding="utf-8")
    assert not re.search(r"\d\.\d{7,}", text), "float noise in results.json"
    result = json.loads(text)
    config = result["config"]
    sha = hashlib.sha256((tmp_path / "model" / "model.safetensors").read_bytes()).hexdigest()
    assert config["model"]["name_or_path"] == str(tmp_path / "model") and config["model"]["weights_sha256"] == {"model.safetensors": sha}
    assert config["dataset"] == {"name": "animals", "source": str(tmp_path / "tree"), "split": "test"}
    assert config["templates"]["templates"] == ["一张{c}的照片。", "{c}的图片"] and config["classnames"]["names"] == sorted(SIX)
    assert config["ensemble"] == "embedding" and config["similarity"] == "global" and "ties count against" in config["tie_rule"]
    assert config["metric_module"]["name"] == "wukong_zero_shot"
    for setting in ("single_prompt", "ensemble"):
        for value in result[setting].values():
            assert round(value, 4) == value and 0 <= value <= 100
    assert result["num_images"] == 18 and result["model_index"]


def test_output_options_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    def no_model(*args):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(commands, "load_model_and_processor", no_model)
    class_tree(tmp_path / "tree", SIX[:2])
    base = ["eval", "zero-shot", "--image-folder", str(tmp_path / "tree"), "--output", str(tmp_path / "run")]
    for extra, message in (
        (["--results-format", "chinese-clip"], "Chinese-CLIP's evaluation output is a retrieval schema"),
        (["--dry-run", str(tmp_path / "card")], "add --push-results ORG/NAME"),
        (["--push-results", "no-slash"], "repo id 'no-slash' must look like 'org/name'"),
    ):
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "card").exists()


def test_write_report_refuses_unknown_formats_and_writes_nothing(tmp_path):
    result = {"task": "zero-shot-classification", "dataset": "d", "split": "test", "num_templates": 1,
              "ensemble_method": "embedding", "single_prompt": {"top1": 50.0, "mean_per_class_recall": 50.0}, "ensemble": None}
    with pytest.raises(ValueError, match=r"Unknown results format\(s\) \['csv'\]"):
        write_report(result, tmp_path / "a", formats=["csv"])
    with pytest.raises(ValueError, match="zero-shot results have no Chinese-CLIP form"):
        write_report(result, tmp_path / "b", formats=["chinese-clip"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_model_provenance_of_a_hub_id_comes_from_the_local_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub

    from wukong_hf.evaluation.report import model_provenance

    commit = "fedcba9876543210fedcba9876543210fedcba98"
    snapshot = tmp_path / "hub" / "models--org--wukong" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "hub" / "models--org--wukong" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--wukong" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    got = model_provenance("org/wukong")
    assert got["revision"] == commit and got["weights_sha256"] == {"model.safetensors": hashlib.sha256(b"weights").hexdigest()}
    assert model_provenance("org/not-cached")["revision"] is None
    assert model_provenance(None, "tiny-global")["preset"] == "tiny-global"
