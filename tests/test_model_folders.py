"""The one loader (model folder, Hub id or preset) and the one exporter (model + processor + reports)."""

import json
import shutil

import huggingface_hub.constants
import pytest
import torch
from conftest import make_tiny, random_images
from transformers import ChineseCLIPConfig

from wukong_hf import WukongModel, WukongProcessor, preset_config
from wukong_hf.model_folders import load_model_and_processor, load_model_config, save_model_folder

# Every Auto class a saved folder answers to where wukong_hf is not installed (trust_remote_code=True).
REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_wukong.WukongConfig",
    "AutoModel": "modeling_wukong.WukongModel",
    "AutoModelForZeroShotImageClassification": "modeling_wukong.WukongModel",
}

CAPTIONS = ["红色圆形", "蓝色方形"]


def _logits(model, processor):
    with torch.no_grad():
        return model(**processor(text=CAPTIONS, images=random_images(2))).logits_per_image


def test_exporter_writes_model_processor_reports_and_the_full_auto_map(tmp_path):
    model, processor = make_tiny("tiny-reduced")
    card = "---\nlicense: apache-2.0\n---\n# 模型\n"
    folder = save_model_folder(tmp_path / "out", model, processor,
                               {"conversion_report.json": {"variant": "tiny-reduced", "说明": "中文"}, "README.md": card})
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "modeling_wukong.py", "configuration_wukong.py",
            "processor_config.json", "tokenizer.json", "conversion_report.json", "README.md"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    assert json.loads((folder / "conversion_report.json").read_text(encoding="utf-8"))["说明"] == "中文"
    assert (folder / "README.md").read_text(encoding="utf-8") == card
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == REMOTE_CODE_AUTO_MAP
    again, again_processor = load_model_and_processor(folder)
    torch.testing.assert_close(_logits(again, again_processor), _logits(model, processor), rtol=0, atol=0)


def test_loader_reads_a_folder_a_preset_and_an_edited_config(tmp_path):
    model, processor = make_tiny("tiny-token-wise")
    save_model_folder(tmp_path / "m", model, processor)
    loaded, loaded_processor = load_model_and_processor(str(tmp_path / "m"), "tiny-global")  # the folder wins
    assert isinstance(loaded, WukongModel) and isinstance(loaded_processor, WukongProcessor) and not loaded.training
    assert loaded.config.similarity == "token_wise"
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key

    fresh, fresh_processor = load_model_and_processor(None, "tiny-global")
    assert fresh.config.to_dict() == WukongModel(preset_config("tiny-global")).config.to_dict() and not fresh.training
    assert fresh_processor.max_length == preset_config("tiny-global").max_text_length

    config = load_model_config(tmp_path / "m")
    config.similarity = "global"
    edited, _ = load_model_and_processor(tmp_path / "m", config=config)
    assert edited.config.similarity == "global"
    assert torch.equal(edited.text_projection.weight, model.text_projection.weight)


def test_loader_reads_a_hub_id_from_the_offline_cache(tmp_path, monkeypatch):
    model, processor = make_tiny("tiny-global")
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("0" * 40)
    save_model_folder(snapshot, model, processor)
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded, _ = load_model_and_processor("org/tiny")
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_loader_names_what_is_wrong_with_the_source(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model folder .*nope does not exist; pass a folder written by"):
        load_model_and_processor(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="has no config.json: it is not a saved model"):
        load_model_and_processor(str(tmp_path))
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file; pass the model folder that holds config.json"):
        load_model_and_processor(str(tmp_path / "weights.safetensors"))
    ChineseCLIPConfig().save_pretrained(tmp_path / "cc")
    with pytest.raises(ValueError, match=r"holds a 'chinese_clip' model, not a Wukong model; convert it first: "
                                         r"wukong convert chinese-clip --model"):
        load_model_and_processor(str(tmp_path / "cc"))
    model, processor = make_tiny("tiny-global")
    save_model_folder(tmp_path / "m", model, processor)
    shutil.copytree(tmp_path / "m", tmp_path / "no-tokenizer")
    (tmp_path / "no-tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        load_model_and_processor(str(tmp_path / "no-tokenizer"))
    with pytest.raises(ValueError, match="Unknown preset 'nope'"):
        load_model_and_processor(None, "nope")
    with pytest.raises(ValueError, match="no model given"):
        load_model_and_processor(None, None)


def test_push_dry_run_export_goes_through_the_exporter(tmp_path):
    from wukong_hf.hub import push_model

    model, processor = make_tiny("tiny-global")
    save_model_folder(tmp_path / "m", model, processor)
    # A folder saved by plain save_pretrained (training, conversion) answers to all three as well.
    (tmp_path / "plain").mkdir()
    model.save_pretrained(tmp_path / "plain")
    processor.save_pretrained(tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["auto_map"] == REMOTE_CODE_AUTO_MAP
    out = push_model(tmp_path / "plain", "org/tiny", dry_run_dir=tmp_path / "export")
    assert json.loads((tmp_path / "export" / "config.json").read_text())["auto_map"] == REMOTE_CODE_AUTO_MAP
    assert out == str(tmp_path / "export") and (tmp_path / "export" / "README.md").is_file()


def test_training_loads_through_the_same_loader(tmp_path):
    from wukong_hf.training.config import ModelSection
    from wukong_hf.training.loop import load_model_for_training

    with pytest.raises(FileNotFoundError, match=r"model folder .*missing does not exist"):
        load_model_for_training(ModelSection(name_or_path=str(tmp_path / "missing")))
    model, processor = make_tiny("tiny-global")
    save_model_folder(tmp_path / "m", model, processor)
    loaded, _ = load_model_for_training(ModelSection(name_or_path=str(tmp_path / "m"),
                                                     overrides={"similarity": "token_wise"}))
    assert loaded.training and loaded.config.similarity == "token_wise"
    assert torch.equal(loaded.text_projection.weight, model.text_projection.weight)
