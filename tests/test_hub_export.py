"""Export / push: the dry-run folder loads with the package, with remote code where the package is
absent, and by repo id from a Hub-style cache offline; the card parses and its model-index matches."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import make_tiny, random_images
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoProcessor

from wukong_hf import hub
from wukong_hf.hub import MEASURED_SOURCE, REPORTED_SOURCE, export_model_folder, push_model

REPO_ID = "wukong-test/tiny-wukong"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
RESULTS = {
    "model_index": [
        {"task_type": "zero-shot-image-classification", "task_name": "Zero-shot image classification",
         "dataset_name": "CIFAR-10 (Chinese labels)", "dataset_type": "cifar10", "dataset_split": "test",
         "metric_type": "accuracy", "metric_name": "top-1", "metric_value": 12.5, "source": "measured"},
        {"task_type": "image-to-text-retrieval", "task_name": "Image-text retrieval",
         "dataset_name": "Flickr30K-CN", "dataset_type": "flickr30k-cn", "dataset_split": "test",
         "metric_type": "recall", "metric_name": "R@1 image-to-text", "metric_value": 3.0, "source": "measured"},
    ]
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub")
    model, processor = make_tiny("tiny-reduced")
    model.save_pretrained(tmp / "model")
    processor.save_pretrained(tmp / "model")
    (tmp / "results.json").write_text(json.dumps(RESULTS), encoding="utf-8")
    out = push_model(tmp / "model", REPO_ID, dry_run_dir=tmp / "export", results_files=[tmp / "results.json"],
                     variant="wukong-vit-b-32-global")
    inputs = processor(text=["一只猫", "一条小狗在草地上"], images=random_images(2, size=(40, 36)))
    inputs = {k: v for k, v in inputs.items()}
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
    return tmp, tmp / "export", out, inputs, logits


def test_dry_run_writes_the_complete_upload_folder(exported):
    tmp, folder, out, _, _ = exported
    assert out == str(folder)
    names = set(os.listdir(folder))
    assert {"model.safetensors", "config.json", "configuration_wukong.py", "modeling_wukong.py", "similarity.py",
            "losses.py", "processor_config.json", "tokenizer.json", "README.md"} <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_wukong.WukongModel"


def test_card_metadata_and_model_index_match_the_results_file(exported):
    _, folder, _, _, _ = exported
    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert data.language == "zh" and data.pipeline_tag == "zero-shot-image-classification"
    assert data.library_name == "transformers" and data.license == "apache-2.0" and data.datasets
    assert "wukong" in data.tags
    reported = [r for r in data.eval_results if r.source_name == REPORTED_SOURCE]
    measured = [r for r in data.eval_results if r.source_name == MEASURED_SOURCE]
    assert [r.metric_value for r in reported] == [44.68, 47.32]
    assert len(measured) == len(RESULTS["model_index"])
    for result, entry in zip(measured, RESULTS["model_index"]):
        for field in ("task_type", "dataset_name", "dataset_type", "dataset_split", "metric_type", "metric_name",
                      "metric_value"):
            assert getattr(result, field) == entry[field], field
    assert f'AutoModel.from_pretrained("{REPO_ID}"' in card.text and "中文" in card.text and "English" in card.text


def test_dry_run_folder_loads_with_the_package(exported):
    _, folder, _, inputs, logits = exported
    model = AutoModel.from_pretrained(folder).eval()
    assert type(model).__module__ == "wukong_hf.modeling_wukong"
    assert AutoProcessor.from_pretrained(folder)(text=["猫"])["input_ids"].shape[1] == 32
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits_per_image, logits)


def _hub_cache(tmp, folder):
    repo = tmp / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / COMMIT, dirs_exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return tmp / "hub"


def test_remote_code_without_the_package_and_hub_cache_by_repo_id(exported):
    tmp, folder, _, inputs, logits = exported
    cache = _hub_cache(tmp, folder)
    save_file({k: v.contiguous() for k, v in inputs.items()}, tmp / "inputs.safetensors")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["wukong_hf"] = None  # the package must not be importable here
        import torch
        from safetensors.torch import load_file, save_file
        from transformers import AutoModel, AutoProcessor
        inputs = load_file({str(tmp / "inputs.safetensors")!r})
        out = {{}}
        for name, source in (("folder", {str(folder)!r}), ("repo", {REPO_ID!r})):
            model = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
            assert "wukong_hf" not in type(model).__module__, type(model).__module__
            with torch.no_grad():
                out[name] = model(**inputs).logits_per_image
        processor = AutoProcessor.from_pretrained({REPO_ID!r}, trust_remote_code=True)
        out["ids"] = processor(text=["一只猫", "一条小狗在草地上"])["input_ids"]
        save_file(out, {str(tmp / "outputs.safetensors")!r})
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_MODULES_CACHE=str(tmp / "modules"))
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = load_file(tmp / "outputs.safetensors")
    torch.testing.assert_close(out["folder"], logits)
    torch.testing.assert_close(out["repo"], logits)
    assert torch.equal(out["ids"], inputs["input_ids"])


def test_push_uses_create_repo_and_upload_folder(exported, monkeypatch):
    tmp, folder, _, _, _ = exported
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private, exist_ok, repo_type):
            calls["create"] = (repo_id, private, exist_ok, repo_type)

        def upload_folder(self, folder_path, repo_id, repo_type, commit_message):
            calls["files"] = sorted(os.listdir(folder_path))
            calls["card"] = open(os.path.join(folder_path, "README.md"), encoding="utf-8").read()
            return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    url = push_model(tmp / "model", REPO_ID, private=True, token="hf_test", results_files=[tmp / "results.json"],
                     variant="wukong-vit-b-32-global")
    assert url.endswith("/commit/abc")
    assert calls["create"] == (REPO_ID, True, True, "model") and calls["token"] == "hf_test"
    assert calls["files"] == sorted(os.listdir(folder))
    assert calls["card"] == (folder / "README.md").read_text(encoding="utf-8")


def test_bad_inputs_are_explained(exported, tmp_path):
    tmp, folder, _, _, _ = exported
    model_dir = tmp / "model"
    with pytest.raises(ValueError, match="must look like 'org/name'"):
        push_model(model_dir, "no-slash", dry_run_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="is not empty"):
        export_model_folder(model_dir, folder)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        export_model_folder(tmp_path, tmp_path / "b")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": []}))
    with pytest.raises(ValueError, match="no top-level 'model_index' list"):
        export_model_folder(model_dir, tmp_path / "c", [bad])
    entry = dict(RESULTS["model_index"][0])
    del entry["metric_value"]
    bad.write_text(json.dumps({"model_index": [entry]}))
    with pytest.raises(ValueError, match=r"model_index\[0\] lacks metric_value"):
        export_model_folder(model_dir, tmp_path / "c", [bad])
    bad.write_text(json.dumps({"model_index": [{**RESULTS["model_index"][0], "source": "paper"}]}))
    with pytest.raises(ValueError, match="carry measured numbers only"):
        export_model_folder(model_dir, tmp_path / "c", [bad])
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        export_model_folder(model_dir, tmp_path / "c", [bad])
    assert not (tmp_path / "c").exists()
