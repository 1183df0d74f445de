"""`wukong convert original --config` and switching a saved model's scoring rules (issue 13)."""

import json

import pytest
import torch
from test_convert_original import official_state_dict

from wukong_hf import WukongConfig, WukongModel, preset_config
from wukong_hf.cli import main
from wukong_hf.convert import load_variant_config, set_scoring_rule


@pytest.fixture
def checkpoint(tmp_path):
    torch.save(official_state_dict(preset_config("tiny-reduced")), tmp_path / "wukong.ckpt")
    return tmp_path / "wukong.ckpt"


def test_convert_original_accepts_a_config_file_or_a_saved_folder(tmp_path, checkpoint, capsys):
    config = preset_config("tiny-reduced")
    config.save_pretrained(tmp_path / "cfg-folder")
    data = json.loads((tmp_path / "cfg-folder" / "config.json").read_text())
    (tmp_path / "layout.json").write_text(json.dumps(data))
    for source in (tmp_path / "layout.json", tmp_path / "cfg-folder"):
        out = tmp_path / f"out-{source.name}"
        assert main(["convert", "original", "--checkpoint", str(checkpoint), "--config", str(source),
                     "--out", str(out)]) == 0
        model = WukongModel.from_pretrained(out)
        assert model.config.num_reduced_tokens == 4 and model.config.token_wise_padding == "zero"
    assert "scores by the official rules" in capsys.readouterr().out
    # --scoring-rule paper keeps the paper's rules; config keeps what the config says.
    assert main(["convert", "original", "--checkpoint", str(checkpoint), "--variant", "tiny-reduced",
                 "--out", str(tmp_path / "paper"), "--scoring-rule", "paper"]) == 0
    assert WukongConfig.from_pretrained(tmp_path / "paper").token_wise_padding == "ignore"


def test_bad_config_sources_are_explained(tmp_path, checkpoint, capsys):
    with pytest.raises(FileNotFoundError, match="config .*missing.json does not exist"):
        load_variant_config(tmp_path / "missing.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_variant_config(tmp_path / "empty")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_variant_config(tmp_path / "bad.json")
    (tmp_path / "clip.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ValueError, match="has model_type 'clip'; a Wukong config has 'wukong'"):
        load_variant_config(tmp_path / "clip.json")
    (tmp_path / "odd.json").write_text(json.dumps({"similarity": "cosine"}))
    with pytest.raises(ValueError, match="Unknown similarity 'cosine'"):
        load_variant_config(tmp_path / "odd.json")
    assert main(["convert", "original", "--checkpoint", str(checkpoint), "--config", str(tmp_path / "bad.json"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_set_rule_switches_a_saved_model_both_ways(tmp_path, capsys):
    WukongModel(preset_config("tiny-token-wise")).save_pretrained(tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    assert main(["convert", "set-rule", str(tmp_path / "m"), "--rule", "official"]) == 0
    config = WukongConfig.from_pretrained(tmp_path / "m")
    assert config.token_wise_padding == "zero" and config.ensemble_method == "probability"
    assert "token_wise_padding='zero'" in capsys.readouterr().out
    set_scoring_rule(tmp_path / "m", "paper")
    config = WukongConfig.from_pretrained(tmp_path / "m")
    assert config.token_wise_padding == "ignore" and config.ensemble_method == "similarity"
    set_scoring_rule(tmp_path / "m", zero_shot_ensemble="probability")
    assert WukongConfig.from_pretrained(tmp_path / "m").ensemble_method == "probability"
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before  # weights untouched
    with pytest.raises(ValueError, match="zero_shot_ensemble='embedding' .* needs similarity='global'"):
        set_scoring_rule(tmp_path / "m", zero_shot_ensemble="embedding")
    with pytest.raises(ValueError, match="Nothing to set"):
        set_scoring_rule(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        set_scoring_rule(tmp_path / "nowhere", "paper")
