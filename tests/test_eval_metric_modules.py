"""The evaluate modules in metrics/: hand-computed answers with ties and several positives per query,
agreement with CLIP_benchmark's and scikit-learn's metric code where no score ties, offline loading
from the installed package (a wheel, not the source tree), and the project calling them."""

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch
from huggingface_hub import metadata_load

from wukong_hf.evaluation import classification_metrics, retrieval_metrics_from_scores
from wukong_hf.evaluation.metrics import METRIC_MODULES, load_metric, metric_module_path, rank_against_negatives

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def zero_shot():
    return evaluate.load(str(ROOT / "metrics" / "wukong_zero_shot"), keep_in_memory=True)


@pytest.fixture(scope="module")
def retrieval():
    return evaluate.load(str(ROOT / "metrics" / "wukong_retrieval"), keep_in_memory=True)


# ----- zero-shot ------------------------------------------------------------------------------


def test_zero_shot_hand_computed_with_ties_and_a_class_without_images(zero_shot):
    scores = [
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # label 0, first -> hit
        [0.5, 0.5, 0.0, 0.0, 0.0, 0.0],  # label 1, tied with class 0 -> rank 1: miss at top-1, hit at top-5
        [0.05, 0.3, 0.1, 0.4, 0.5, 0.6],  # label 0, five wrong classes above -> rank 5: miss at top-5 too
        [0.0, 0.0, 1.0, 0.0, 0.0, 0.0],  # label 2, hit
    ]
    got = zero_shot.compute(predictions=scores, references=[0, 1, 0, 2])
    # classes 0: 1/2, 1: 0/1, 2: 1/1; classes 3-5 have no images and are left out of the mean.
    assert got == {"top1_accuracy": 0.5, "top5_accuracy": 0.75, "mean_per_class_recall": 0.5}


def test_zero_shot_constant_and_nan_scores_get_no_credit(zero_shot):
    assert zero_shot.compute(predictions=np.zeros((6, 7)), references=[0, 1, 2, 3, 4, 5]) == {
        "top1_accuracy": 0.0, "top5_accuracy": 0.0, "mean_per_class_recall": 0.0}
    nan = float("nan")
    got = zero_shot.compute(predictions=[[0.9, nan, 0.0], [nan, 0.1, 0.0], [0.9, 0.0, 0.1]], references=[0, 0, 0])
    # row 0: a NaN wrong class outranks the true one; row 1: a NaN true class is a miss; row 2: a hit.
    assert got["top1_accuracy"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("num_classes,has_top5", [(2, False), (5, False), (6, True)])
def test_top5_only_with_more_than_five_classes(zero_shot, num_classes, has_top5):
    scores = np.random.default_rng(num_classes).normal(size=(12, num_classes))
    got = zero_shot.compute(predictions=scores, references=np.arange(12) % num_classes)
    assert ("top5_accuracy" in got) is has_top5
    assert set(got) >= {"top1_accuracy", "mean_per_class_recall"}


def test_zero_shot_ranks_configuration_equals_scores(zero_shot):
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=(40, 9)), rng.integers(0, 9, 40)
    ranks = evaluate.load(str(ROOT / "metrics" / "wukong_zero_shot"), "ranks", keep_in_memory=True)
    namespace = sys.modules[type(ranks).__module__]
    got = ranks.compute(ranks=namespace.class_ranks(scores, labels), references=labels, num_classes=9)
    assert got == zero_shot.compute(predictions=scores, references=labels)


def test_zero_shot_bad_inputs_are_explained(zero_shot):
    with pytest.raises(ValueError, match=r"references must be class indices in \[0, 2\)"):
        zero_shot.compute(predictions=[[0.1, 0.2]], references=[2])
    with pytest.raises(ValueError, match="must score the same classes; got rows of lengths \\[2, 3\\]"):
        zero_shot.compute(predictions=[[0.1, 0.2], [0.1, 0.2, 0.3]], references=[0, 1])
    ranks = evaluate.load(str(ROOT / "metrics" / "wukong_zero_shot"), "ranks", keep_in_memory=True)
    with pytest.raises(ValueError, match="needs num_classes=C"):
        ranks.compute(ranks=[0], references=[0])


def _topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    # CLIP_benchmark's accuracy() rule (torch.topk, then "is the label among them"); its own function
    # cannot run here: under numpy 2.4 its float() of a 1-element array raises TypeError.
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).float().mean().item()


def test_zero_shot_agrees_with_topk_and_sklearn_without_ties(zero_shot):
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(300, 12)).astype(np.float32)
    labels = rng.integers(0, 12, 300)
    logits[np.arange(300), labels] += 1.0  # better than chance, still many misses
    got = zero_shot.compute(predictions=logits, references=labels)
    acc1, acc5 = (_topk_accuracy(torch.from_numpy(logits), torch.from_numpy(labels), k) for k in (1, 5))
    assert got["top1_accuracy"] == pytest.approx(acc1) and got["top5_accuracy"] == pytest.approx(acc5)
    assert got["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(labels, logits.argmax(1)))
    assert 0.2 < acc1 < 0.9


def test_ties_are_where_the_rules_differ(zero_shot):
    # torch.topk (CLIP_benchmark, Chinese-CLIP) breaks a tie by position: a constant scorer is "right"
    # on every image of whichever class comes first. Ours gives it nothing.
    labels = np.array([0, 0, 0, 1, 2, 3, 4, 5])
    constant = np.zeros((8, 6), dtype=np.float32)
    theirs = _topk_accuracy(torch.from_numpy(constant), torch.from_numpy(labels), 1)
    assert theirs > 0 and zero_shot.compute(predictions=constant, references=labels)["top1_accuracy"] == 0.0


# ----- retrieval ------------------------------------------------------------------------------


def test_retrieval_several_captions_per_image_hand_computed(retrieval):
    # 2 images x 4 texts; texts 0, 1 describe image 0, texts 2, 3 image 1.
    i2t = [[0.1, 0.9, 0.8, 0.2], [0.7, 0.1, 0.3, 0.6]]
    got = retrieval.compute(predictions=i2t, references=[[0, 1], [2, 3]], recall_at=(1, 2))
    # image 0: best correct 0.9 first; image 1: best correct 0.6 below text 0 (0.7) -> rank 1.
    # texts (columns): 0: 0.1 < 0.7 (image 1) miss; 1: hit; 2: 0.3 < 0.8 miss; 3: hit.
    assert got == {"image_to_text_recall@1": 0.5, "image_to_text_recall@2": 1.0,
                   "text_to_image_recall@1": 0.5, "text_to_image_recall@2": 1.0, "mean_recall": 0.75}


def test_retrieval_several_images_per_caption_ties_and_distractors(retrieval):
    # MUGE-like: text 0 describes images 0 and 1 (either counts), text 1 describes image 2, image 3
    # is a distractor no text describes. text-to-image only.
    t2i = np.array([[0.1, 0.8, 0.9, 0.5], [0.3, 0.2, 0.3, 0.3]])
    got = retrieval.compute(predictions=t2i.T, references=[[0], [0], [1], []], directions=["text_to_image"],
                            recall_at=(1, 2, 3))
    # text 0: best correct 0.8, one wrong (0.9) above -> rank 1. text 1: correct 0.3 tied by images 0
    # and 3 (wrong) -> rank 2: ties count against the model.
    assert got == {"text_to_image_recall@1": 0.0, "text_to_image_recall@2": 0.5, "text_to_image_recall@3": 1.0,
                   "mean_recall": 0.5}


def test_retrieval_asymmetric_scores_use_the_text_to_image_matrix(retrieval):
    i2t = [[0.9, 0.1], [0.2, 0.8]]  # both images find their text
    t2i = [[0.1, 0.9], [0.8, 0.2]]  # both texts prefer the wrong image
    got = retrieval.compute(predictions=i2t, references=[[0], [1]], text_to_image_scores=t2i, recall_at=(1,))
    assert got == {"image_to_text_recall@1": 1.0, "text_to_image_recall@1": 0.0, "mean_recall": 0.5}


def test_retrieval_ranks_configuration_and_bad_inputs(retrieval):
    ranks = evaluate.load(str(ROOT / "metrics" / "wukong_retrieval"), "ranks", keep_in_memory=True)
    got = ranks.compute(ranks=[0, 4, -1, 0, 12], directions=["image_to_text"] * 3 + ["text_to_image"] * 2)
    assert got["image_to_text_recall@1"] == 0.5 and got["image_to_text_recall@5"] == 1.0  # -1: left out
    assert got["text_to_image_recall@10"] == 0.5 and got["mean_recall"] == pytest.approx((0.5 + 1 + 1 + 0.5 + 0.5 + 0.5) / 6)
    with pytest.raises(ValueError, match="No text_to_image query has a correct candidate"):
        ranks.compute(ranks=[-1], directions=["text_to_image"])
    with pytest.raises(ValueError, match=r"references\[1\] names texts outside \[0, 2\)"):
        retrieval.compute(predictions=[[0.1, 0.2], [0.3, 0.4]], references=[[0], [2]])
    with pytest.raises(ValueError, match=r"text_to_image_scores must be \(texts, images\) = \(2, 2\)"):
        retrieval.compute(predictions=[[0.1, 0.2], [0.3, 0.4]], references=[[0], [1]], text_to_image_scores=[[0.0]])


def test_retrieval_agrees_with_clip_benchmark_without_ties(retrieval):
    from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k

    rng = np.random.default_rng(2)
    num_images, per_image = 30, 5
    texts_image = np.repeat(np.arange(num_images), per_image)  # five captions per image, as Flickr30K-CN
    emb_i, emb_t = rng.normal(size=(num_images, 16)), rng.normal(size=(num_images * per_image, 16))
    emb_t += 1.5 * emb_i[texts_image]
    t2i = torch.from_numpy((emb_t @ emb_i.T).astype(np.float32))
    positive = torch.zeros_like(t2i, dtype=torch.bool)
    positive[torch.arange(len(texts_image)), torch.from_numpy(texts_image)] = True
    got = retrieval.compute(predictions=t2i.T.numpy(), references=[list(np.flatnonzero(texts_image == i)) for i in range(num_images)])
    for k in (1, 5, 10):
        image_retrieval = (batchify(recall_at_k, t2i, positive, 64, "cpu", k=k) > 0).float().mean().item()
        text_retrieval = (batchify(recall_at_k, t2i.T, positive.T, 64, "cpu", k=k) > 0).float().mean().item()
        assert got[f"text_to_image_recall@{k}"] == pytest.approx(image_retrieval)
        assert got[f"image_to_text_recall@{k}"] == pytest.approx(text_retrieval)
    assert 0.1 < got["text_to_image_recall@1"] < 0.95


# ----- the modules as files: self-contained, cards, installed package --------------------------


@pytest.mark.parametrize("name", METRIC_MODULES)
def test_modules_are_self_contained_with_a_space_card(name):
    folder = ROOT / "metrics" / name
    tree = ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"datasets", "evaluate", "numpy"}  # never wukong_hf: publishable on its own
    meta = metadata_load(folder / "README.md")
    assert meta["sdk"] == "gradio" and (folder / meta["app_file"]).is_file() and {"evaluate", "metric"} <= set(meta["tags"])
    assert "Tie rule" in (folder / "README.md").read_text(encoding="utf-8")
    assert metric_module_path(name) == folder  # the editable install maps wukong_hf.metric_modules to metrics/


def test_project_metrics_are_the_modules_numbers():
    rng = np.random.default_rng(3)
    scores, labels = rng.normal(size=(50, 8)).astype(np.float32), rng.integers(0, 8, 50)
    module = load_metric("wukong_zero_shot").compute(predictions=scores, references=labels)
    project = classification_metrics(torch.from_numpy(scores), torch.from_numpy(labels))
    assert project == {"top1": round(100 * module["top1_accuracy"], 4), "top5": round(100 * module["top5_accuracy"], 4),
                       "mean_per_class_recall": round(100 * module["mean_per_class_recall"], 4)}
    i2t = rng.normal(size=(6, 12))
    text_images = [[j % 6] for j in range(12)]
    module = load_metric("wukong_retrieval").compute(predictions=i2t, references=[[j for j in range(12) if j % 6 == i] for i in range(6)])
    project = retrieval_metrics_from_scores(torch.from_numpy(i2t), torch.from_numpy(i2t.T), text_images)
    assert project["MR"] == round(100 * module["mean_recall"], 4)
    assert project["i2t_R@1"] == round(100 * module["image_to_text_recall@1"], 4)
    # the streaming ranker's tie rule is the module's function
    ranks = rank_against_negatives(torch.tensor([[0.5, 0.5, 0.2]]), torch.tensor([0.5]), torch.tensor([[True, False, False]]))
    assert ranks.tolist() == [1]


def test_installed_wheel_loads_the_modules_offline(tmp_path):
    """Build the wheel, install it into a folder and load both modules from there with no network."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "src", "modeling", "model_cards", "metrics", "dataset_scripts"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(ROOT / name, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "wheel").glob("wukong_hf-*.whl"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    script = (
        "import json, wukong_hf\n"
        "from wukong_hf.evaluation.metrics import load_metric, metric_module_path\n"
        "out = {'package': wukong_hf.__file__, 'folder': str(metric_module_path('wukong_retrieval'))}\n"
        "out['zero_shot'] = load_metric('wukong_zero_shot').compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 0])\n"
        "out['retrieval'] = load_metric('wukong_retrieval', 'ranks').compute(ranks=[0, 1], directions=['text_to_image'] * 2)\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
           "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HOME": str(tmp_path / "hf_home")}
    run = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["package"].startswith(str(tmp_path / "site")) and out["folder"].startswith(str(tmp_path / "site"))
    assert out["zero_shot"] == {"top1_accuracy": 0.5, "mean_per_class_recall": 0.5}
    assert out["retrieval"]["text_to_image_recall@1"] == 0.5
    assert list((tmp_path / "modules" / "evaluate_modules" / "metrics").iterdir())  # evaluate's own module cache, not the home folder


def test_the_tie_rule_is_the_same_code_in_both_modules():
    """Each module is published alone, so the tie rule is written in both: the two copies must not drift."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "metrics"
    functions = {}
    for name in ("wukong_zero_shot", "wukong_retrieval"):
        tree = ast.parse((root / name / f"{name}.py").read_text(encoding="utf-8"))
        functions[name] = {node.name: ast.dump(node) for node in tree.body
                           if isinstance(node, ast.FunctionDef) and node.name in ("best_correct_scores", "count_outranking")}
    assert set(functions["wukong_zero_shot"]) == {"best_correct_scores", "count_outranking"}
    assert functions["wukong_zero_shot"] == functions["wukong_retrieval"]
