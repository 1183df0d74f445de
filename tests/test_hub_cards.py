"""Every model card the project writes parses with huggingface_hub (metadata_load,
model_index_to_eval_results), uses Hub task ids, evaluate's metric names and dataset ids the Hub
accepts; training validation and `wukong eval` write the same entries; `--push-results` appends."""

import json
import re

import huggingface_hub
import pytest
from conftest import make_tiny
from evaluate.config import HF_HUB_ALLOWED_TASKS
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from test_eval_readers import write_chinese_clip
from test_eval_results_files import class_tree

from wukong_hf import hub
from wukong_hf.cli import main
from wukong_hf.hub import MEASURED_SOURCE, REPORTED_SOURCE, build_model_card, merge_eval_results, push_eval_results, push_model
from wukong_hf.training import TrainConfig
from wukong_hf.training.loop import _write_validation_results

REPO_ID = "wukong-test/tiny-wukong"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# The Hub rejects a model-index whose dataset.type fails this pattern (its error message, quoted in
# embeddings-benchmark/mteb issue 1111).
HUB_DATASET_TYPE = re.compile(r"^(?:[\w-]+\/)?[\w\-.]+$")
# Real Hub datasets the project names (ILSVRC/imagenet-1k, CIFAR, the Wukong URL list's community mirror).
KNOWN_HUB_DATASETS = {"ILSVRC/imagenet-1k", "uoft-cs/cifar10", "uoft-cs/cifar100", "wanng/wukong100m"}


def parsed_results(card_path):
    """The card as the Hub's Python client reads it: metadata, then the model-index as EvalResults."""
    meta = metadata_load(card_path)
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name and results
    for r in results:
        assert r.task_type in HF_HUB_ALLOWED_TASKS and r.task_type in {"zero-shot-image-classification", "other"}
        assert r.metric_type in {"accuracy", "recall"}, r.metric_type
        assert HUB_DATASET_TYPE.match(r.dataset_type), r.dataset_type
        assert isinstance(r.metric_value, (int, float)) and 0 <= r.metric_value <= 100
        assert round(r.metric_value, 2) == r.metric_value
    assert all(d in KNOWN_HUB_DATASETS for d in meta.get("datasets") or [])
    return meta, results


@pytest.fixture(scope="module")
def eval_runs(tmp_path_factory):
    """results.json of a zero-shot and a retrieval run of `wukong eval` (random tiny towers)."""
    tmp = tmp_path_factory.mktemp("runs")
    class_tree(tmp / "tree", ["猫", "狗", "鸟", "鱼", "马", "牛"])
    assert main(["eval", "zero-shot", "--preset", "tiny-global", "--image-folder", str(tmp / "tree"), "--templates", "imagenet1k",
                 "--dataset-name", "imagenet1k-cn", "--output", str(tmp / "zs")]) == 0
    write_chinese_clip(tmp / "set", split="test")
    assert main(["eval", "retrieval", "--preset", "tiny-global", "--data", str(tmp / "set"), "--split", "test",
                 "--name", "flickr30k-cn", "--output", str(tmp / "rt")]) == 0
    return tmp, [tmp / "zs" / "results.json", tmp / "rt" / "results.json"]


def test_released_variant_card_with_reported_and_measured_results(eval_runs, tmp_path):
    _, files = eval_runs
    build_model_card(REPO_ID, "wukong-vit-b-32-global", files).save(tmp_path / "README.md")
    meta, results = parsed_results(tmp_path / "README.md")
    assert meta["datasets"] == ["wanng/wukong100m"] and "wukong" not in meta["datasets"]
    reported = [r for r in results if r.source_name == REPORTED_SOURCE]
    assert [(r.metric_name, r.metric_value, r.dataset_type) for r in reported] == [
        ("top-1 accuracy (class name only)", 44.68, "ILSVRC/imagenet-1k"), ("top-1 accuracy (80 templates)", 47.32, "ILSVRC/imagenet-1k")]
    measured = [r for r in results if r.source_name == MEASURED_SOURCE]
    zero_shot = [r for r in measured if r.task_type == "zero-shot-image-classification"]
    retrieval = [r for r in measured if r.task_type == "other"]
    assert {r.dataset_type for r in zero_shot} == {"ILSVRC/imagenet-1k"}  # the name maps to the real Hub dataset
    assert {r.metric_name for r in zero_shot} >= {"top-1 accuracy (class name only)", "top-5 accuracy (80 templates, embedding ensemble)",
                                                  "mean per-class recall (80 templates, embedding ensemble)"}
    assert {r.metric_args.get("k") for r in zero_shot if r.metric_type == "accuracy"} == {1, 5}
    assert {r.task_name for r in retrieval} == {"Image-text retrieval"} and len(retrieval) == 7  # 6 R@k + MR
    assert {r.dataset_type for r in retrieval} == {"flickr30k-cn"}  # not on the Hub: a slug the Hub accepts
    results_json = json.loads(files[1].read_text(encoding="utf-8"))
    assert [r.metric_value for r in retrieval] == [round(v, 2) for v in results_json["metrics"].values()]


def test_custom_model_card_names_no_made_up_dataset(eval_runs, tmp_path):
    _, files = eval_runs
    build_model_card(REPO_ID, None, files[:1]).save(tmp_path / "README.md")
    meta, results = parsed_results(tmp_path / "README.md")
    assert "datasets" not in meta and all(r.source_name == MEASURED_SOURCE for r in results)


def test_training_validation_and_wukong_eval_write_the_same_entries(tmp_path):
    class_tree(tmp_path / "val", ["红色", "绿色", "蓝色"])
    (tmp_path / "templates.txt").write_text("一张{c}的照片。\n", encoding="utf-8")
    assert main(["eval", "zero-shot", "--preset", "tiny-global", "--dataset", str(tmp_path / "val"), "--split", "train",
                 "--templates", str(tmp_path / "templates.txt"), "--output", str(tmp_path / "eval")]) == 0
    from_eval = json.loads((tmp_path / "eval" / "results.json").read_text(encoding="utf-8"))
    config = TrainConfig.from_dict({"model": {"preset": "tiny-global"}, "data": {"dataset": str(tmp_path / "val")},
                                    "eval": {"dataset": str(tmp_path / "val"), "split": "train", "class_names": ["红色", "绿色", "蓝色"],
                                             "templates": ["一张{c}的照片。"]},
                                    "loop": {"output_dir": str(tmp_path / "train")}})
    model, processor = make_tiny("tiny-global")
    model.save_pretrained(tmp_path / "train" / "final")
    accuracy = from_eval["ensemble"]["top1"]
    from_training = json.loads(open(_write_validation_results(config, accuracy, tmp_path / "train"), encoding="utf-8").read())
    top1 = [e for e in from_eval["model_index"] if e["metric_name"].startswith("top-1") and "template" in e["metric_name"]]
    assert from_training["model_index"] == top1  # same task, dataset, metric type, name, args and value
    assert top1[0]["metric_name"] == "top-1 accuracy (1 template)" and top1[0]["dataset_type"] == "val"

    processor.save_pretrained(tmp_path / "train" / "final")
    push_model(tmp_path / "train" / "final", REPO_ID, dry_run_dir=tmp_path / "export",
               results_files=[tmp_path / "train" / "validation_results.json"])
    _, results = parsed_results(tmp_path / "export" / "README.md")
    assert [r.metric_value for r in results] == [round(accuracy, 2)]


def hub_cache_with_card(tmp_path, card_text: str):
    repo = tmp_path / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "snapshots" / COMMIT / "README.md").write_text(card_text, encoding="utf-8")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return tmp_path / "hub"


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    # huggingface_hub reads these at import: patch the constants so nothing can reach the Hub.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path


def test_push_results_dry_run_appends_to_the_card_on_the_hub(eval_runs, offline_hub, capsys):
    tmp, _ = eval_runs
    existing = build_model_card(REPO_ID, "wukong-vit-b-32-global")
    hub_cache_with_card(offline_hub, str(existing))
    out = offline_hub / "card"
    assert main(["eval", "retrieval", "--preset", "tiny-global", "--data", str(tmp / "set"), "--split", "test",
                 "--name", "flickr30k-cn", "--output", str(offline_hub / "rt"), "--push-results", REPO_ID, "--dry-run", str(out)]) == 0
    assert "dry run: wrote" in capsys.readouterr().out
    meta, results = parsed_results(out / "README.md")
    assert len([r for r in results if r.source_name == REPORTED_SOURCE]) == 2  # kept
    assert len([r for r in results if r.task_type == "other"]) == 7  # appended
    assert meta["datasets"] == ["wanng/wukong100m"] and meta["model-index"][0]["name"] == "tiny-wukong"
    card = ModelCard.load(out / "README.md")
    assert "Wukong CLIP ViT-B/32" in card.text  # the body of the card is untouched

    # the same results again, through `wukong eval push-results`: values replaced, nothing duplicated
    assert main(["eval", "push-results", "--results", str(offline_hub / "rt" / "results.json"), "--repo-id", REPO_ID,
                 "--dry-run", str(offline_hub / "card2")]) == 0
    _, again = parsed_results(offline_hub / "card2" / "README.md")
    assert len(again) == len(results)


def test_merge_replaces_values_of_the_same_metric(eval_runs):
    _, files = eval_runs
    card = build_model_card(REPO_ID, None, files[1:])
    before = list(card.data.eval_results)
    newer = hub.measured_eval_results(files[1:], REPO_ID)
    for r in newer:
        r.metric_value = 12.34
    assert merge_eval_results(card, newer) == (0, len(newer))
    assert len(card.data.eval_results) == len(before) and {r.metric_value for r in card.data.eval_results} == {12.34}


def test_push_results_uploads_the_merged_card(eval_runs, offline_hub, monkeypatch):
    _, files = eval_runs
    hub_cache_with_card(offline_hub, "---\nlicense: apache-2.0\n---\n# tiny\n")
    pushed = {}

    def fake_push(self, repo_id, token=None, commit_message=None, **kwargs):
        pushed.update(repo_id=repo_id, message=commit_message, content=str(self))
        return f"https://huggingface.co/{repo_id}/commit/abc"

    monkeypatch.setattr(ModelCard, "push_to_hub", fake_push)
    url = push_eval_results(REPO_ID, results_files=files)
    assert url.endswith("/commit/abc") and pushed["repo_id"] == REPO_ID and "new" in pushed["message"]
    (offline_hub / "pushed.md").write_text(pushed["content"], encoding="utf-8")
    meta, results = parsed_results(offline_hub / "pushed.md")
    assert meta["license"] == "apache-2.0" and meta["model-index"][0]["name"] == "tiny-wukong"
    assert len(results) == sum(len(json.loads(f.read_text(encoding="utf-8"))["model_index"]) for f in files)


def test_push_results_explains_an_unreadable_card(eval_runs, offline_hub):
    _, files = eval_runs
    (offline_hub / "hub").mkdir()
    with pytest.raises(ValueError, match="offline and not in the Hub cache"):
        push_eval_results("someone/elsewhere", results_files=files, dry_run_dir=offline_hub / "x")
    with pytest.raises(ValueError, match="no results to push"):
        push_eval_results(REPO_ID)
    assert not (offline_hub / "x").exists()


def imagenet_validation_results(tmp_path):
    """A results file of an ImageNet-CN validation run (the paper's reported setting)."""
    from wukong_hf.evaluation.report import model_index_entries

    result = {"task": "zero-shot-classification", "dataset": "imagenet1k-cn", "split": "validation", "num_templates": 80,
              "ensemble_method": "embedding", "single_prompt": {"top1": 43.2, "top5": 70.1, "mean_per_class_recall": 43.0},
              "ensemble": {"top1": 46.9, "top5": 74.0, "mean_per_class_recall": 46.5}}
    path = tmp_path / "imagenet.json"
    path.write_text(json.dumps({"model_index": model_index_entries(result)}), encoding="utf-8")
    return path


def test_measured_imagenet_results_are_never_labelled_as_reported(tmp_path):
    # huggingface_hub groups results by (task, dataset, split) and labels a group with its first
    # source: measured ImageNet validation numbers beside the paper's would read as "reported".
    card = build_model_card(REPO_ID, "wukong-vit-b-32-global", [imagenet_validation_results(tmp_path)])
    card.save(tmp_path / "README.md")
    _, results = parsed_results(tmp_path / "README.md")
    assert {r.source_name for r in results} == {MEASURED_SOURCE} and len(results) == 6
    assert "44.68" in card.text and "47.32" in card.text  # the paper's numbers stay in the card's text


def test_push_results_onto_a_card_with_reported_or_foreign_results(tmp_path, offline_hub):
    results_file = imagenet_validation_results(tmp_path)
    hub_cache_with_card(offline_hub, str(build_model_card(REPO_ID, "wukong-vit-b-32-global")))
    path = push_eval_results(REPO_ID, results_files=[results_file], dry_run_dir=offline_hub / "card")
    _, results = parsed_results(path)
    assert {r.source_name for r in results} == {MEASURED_SOURCE} and len(results) == 6

    card = ModelCard.load(path)
    for r in card.data.eval_results:
        r.source_name, r.source_url = "Some leaderboard", "https://example.org/board"
    with pytest.raises(ValueError, match="from 'Some leaderboard'; a model-index block holds one source"):
        merge_eval_results(card, hub.measured_eval_results([results_file], REPO_ID))
