"""Hub-native behaviour: Auto classes, save/load, remote code without the package, offline cache, pipeline."""

import json
import os
import shutil
import subprocess
import sys

import huggingface_hub.constants
import pytest
import torch
from conftest import make_tiny, random_images
from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification, AutoProcessor, pipeline

from wukong_hf import WukongConfig, WukongModel, WukongProcessor

CAPTIONS = ["红色圆形", "蓝色方形"]


def _save(tmp_path, preset="tiny-token-wise"):
    model, processor = make_tiny(preset)
    folder = tmp_path / preset
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor, folder


def test_auto_classes_are_registered():
    config = AutoConfig.for_model("wukong")
    assert isinstance(config, WukongConfig)
    assert AutoModel._model_mapping[WukongConfig] is WukongModel
    assert AutoModelForZeroShotImageClassification._model_mapping[WukongConfig] is WukongModel


@pytest.mark.parametrize("preset", ["tiny-token-wise", "tiny-global", "tiny-reduced"])
def test_save_pretrained_writes_safetensors_and_reloads_identically(tmp_path, preset):
    model, processor, folder = _save(tmp_path, preset)
    files = set(os.listdir(folder))
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert {"config.json", "processor_config.json", "modeling_wukong.py", "similarity.py"} <= files
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_wukong.WukongModel"
    again = AutoModel.from_pretrained(folder).eval()
    again_processor = AutoProcessor.from_pretrained(folder)
    assert isinstance(again, WukongModel) and isinstance(again_processor, WukongProcessor)
    inputs = processor(text=CAPTIONS, images=random_images(2))
    with torch.no_grad():
        a, b = model(**inputs), again(**again_processor(text=CAPTIONS, images=random_images(2)))
    torch.testing.assert_close(a.logits_per_image, b.logits_per_image, rtol=0, atol=0)
    torch.testing.assert_close(a.logits_per_text, b.logits_per_text, rtol=0, atol=0)


_REMOTE_SCRIPT = r"""
import sys, json
sys.modules["wukong_hf"] = None  # the package must not be importable
from transformers import AutoModel, AutoProcessor
import torch
from PIL import Image
folder = sys.argv[1]
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
images = [Image.open(p) for p in sys.argv[2:]]
with torch.no_grad():
    out = model(**processor(text=["红色圆形", "蓝色方形"], images=images))
print(json.dumps(out.logits_per_image.tolist()))
"""


def test_saved_folder_loads_with_remote_code_where_the_package_is_absent(tmp_path):
    model, processor, folder = _save(tmp_path)
    paths = []
    for i, image in enumerate(random_images(2)):
        paths.append(str(tmp_path / f"{i}.png"))
        image.save(paths[-1])
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", _REMOTE_SCRIPT, str(folder), *paths], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote_logits = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    from PIL import Image

    with torch.no_grad():
        local = model(**processor(text=CAPTIONS, images=[Image.open(p) for p in paths])).logits_per_image
    torch.testing.assert_close(remote_logits, local, atol=1e-6, rtol=1e-6)


def test_saved_folder_loads_by_repo_id_from_an_offline_hub_cache(tmp_path, monkeypatch):
    model, processor, folder = _save(tmp_path)
    cache = tmp_path / "hub"
    repo = cache / "models--wukong-org--wukong-tiny"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    # huggingface_hub reads HF_HUB_OFFLINE at import: set the constant too, so nothing can reach the Hub.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    loaded = AutoModel.from_pretrained("wukong-org/wukong-tiny", cache_dir=str(cache))
    loaded_processor = AutoProcessor.from_pretrained("wukong-org/wukong-tiny", cache_dir=str(cache))
    assert isinstance(loaded, WukongModel) and isinstance(loaded_processor, WukongProcessor)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


@pytest.mark.parametrize("preset", ["tiny-token-wise", "tiny-global"])
def test_zero_shot_pipeline_with_chinese_labels(tmp_path, preset):
    model, processor, folder = _save(tmp_path, preset)
    classifier = pipeline("zero-shot-image-classification", model=str(folder))
    labels = ["猫", "狗", "飞机"]
    result = classifier(random_images(1)[0], candidate_labels=labels, hypothesis_template="{}的照片。")
    assert sorted(r["label"] for r in result) == sorted(labels)
    assert sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 <= r["score"] <= 1.0 for r in result)
    assert result[0]["score"] >= result[-1]["score"]
    # The pipeline's scores are the model's softmax over the filled-in templates.
    with torch.no_grad():
        logits = model(**processor(text=[f"{l}的照片。" for l in labels], images=random_images(1))).logits_per_image
    expected = dict(zip(labels, logits.softmax(-1)[0].tolist()))
    for r in result:
        assert r["score"] == pytest.approx(expected[r["label"]], abs=1e-5)


# Runs where wukong_hf cannot be imported at all: a meta-path finder refuses it before any other finder
# (the editable install's included), so the saved folder's copied code files are the only source.
_PIPELINE_WITHOUT_PACKAGE = r"""
import json, sys

class RefuseWukongHf:
    def find_spec(self, name, path=None, target=None):
        if name == "wukong_hf" or name.startswith("wukong_hf."):
            raise ImportError(f"{name} is blocked: only the saved folder's code may run")
        return None

sys.meta_path.insert(0, RefuseWukongHf())
try:
    import wukong_hf
except ImportError:
    pass
else:
    raise SystemExit("the blocker failed: wukong_hf imported")

from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, pipeline

folder, image_path = sys.argv[1], sys.argv[2]
classifier = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
result = classifier(Image.open(image_path), candidate_labels=["猫", "狗", "飞机"], hypothesis_template="{}的照片。")
classes = {
    "model": type(classifier.model).__module__ + "." + type(classifier.model).__name__,
    "processor": type(AutoProcessor.from_pretrained(folder, trust_remote_code=True)).__module__,
    "tokenizer": type(AutoTokenizer.from_pretrained(folder, trust_remote_code=True)).__name__,
    "image_processor": type(AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)).__name__,
    "image_processor_module": type(AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)).__module__,
}
print(json.dumps({"result": result, "classes": classes, "wukong_hf_loaded": any(m.startswith("wukong_hf") for m in sys.modules)}))
"""


@pytest.mark.parametrize("preset", ["tiny-token-wise", "tiny-global"])
def test_zero_shot_pipeline_runs_from_remote_code_where_wukong_hf_cannot_be_imported(tmp_path, preset):
    from PIL import Image

    from wukong_hf.model_folders import save_model_folder

    model, processor = make_tiny(preset)
    folder = save_model_folder(tmp_path / "model", model, processor)
    image_path = tmp_path / "image.png"
    random_images(1)[0].save(image_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-c", _PIPELINE_WITHOUT_PACKAGE, str(folder), str(image_path)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert not out["wukong_hf_loaded"]
    assert out["classes"]["model"].startswith("transformers_modules.") and out["classes"]["model"].endswith(".WukongModel")
    assert out["classes"]["processor"].startswith("transformers_modules.")
    assert out["classes"]["image_processor_module"].startswith("transformers_modules.")
    assert out["classes"]["tokenizer"] == "BertTokenizer" and out["classes"]["image_processor"] == "WukongImageProcessor"
    # The remote-code pipeline's scores are the package model's softmax over the filled-in templates.
    labels = ["猫", "狗", "飞机"]
    with torch.no_grad():
        logits = model(**processor(text=[f"{l}的照片。" for l in labels], images=[Image.open(image_path)])).logits_per_image
    expected = dict(zip(labels, logits.softmax(-1)[0].tolist()))
    assert sorted(r["label"] for r in out["result"]) == sorted(labels)
    for r in out["result"]:
        assert r["score"] == pytest.approx(expected[r["label"]], abs=1e-5)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForZeroShotImageClassification"] == "modeling_wukong.WukongModel"
    assert config["auto_map"]["AutoModel"] == "modeling_wukong.WukongModel"
