"""`wukong convert ...` and `wukong push` parse arguments and call the library functions."""

import json

import torch
from test_convert_chinese_clip import tiny_chinese_clip
from test_convert_original import official_state_dict

from wukong_hf import WukongModel, preset_config
from wukong_hf.cli import main


def test_convert_original_image_tower_chinese_clip_and_push_dry_run(tmp_path, capsys):
    sd = official_state_dict(preset_config("tiny-reduced"))
    torch.save(sd, tmp_path / "wukong.ckpt")
    assert main(["convert", "original", "--checkpoint", str(tmp_path / "wukong.ckpt"), "--variant", "tiny-reduced",
                 "--out", str(tmp_path / "orig")]) == 0
    assert f"{len(sd)} keys mapped" in capsys.readouterr().out
    assert json.loads((tmp_path / "orig" / "conversion_report.json").read_text())["variant"] == "tiny-reduced"

    assert main(["convert", "image-tower", "--preset", "tiny-reduced", "--weights", str(tmp_path / "wukong.ckpt"),
                 "--out", str(tmp_path / "lit")]) == 0
    lit = WukongModel.from_pretrained(tmp_path / "lit")
    assert "lock_image_tower" not in lit.config.to_dict() and all(p.requires_grad for p in lit.parameters())

    tiny_chinese_clip().save_pretrained(tmp_path / "cc")
    assert main(["convert", "chinese-clip", "--model", str(tmp_path / "cc"), "--out", str(tmp_path / "cc-out")]) == 0
    assert WukongModel.from_pretrained(tmp_path / "cc-out").config.similarity == "global"

    assert main(["push", "--model", str(tmp_path / "orig"), "--repo-id", "org/tiny", "--dry-run",
                 str(tmp_path / "export")]) == 0
    assert "nothing uploaded" in capsys.readouterr().out
    assert (tmp_path / "export" / "README.md").is_file()


def test_cli_errors_name_the_problem(tmp_path, capsys):
    torch.save(official_state_dict(preset_config("tiny-reduced")), tmp_path / "wukong.ckpt")
    code = main(["convert", "original", "--checkpoint", str(tmp_path / "wukong.ckpt"), "--variant", "tiny-global",
                 "--out", str(tmp_path / "x")])
    assert code == 2
    assert "bert text tower" in capsys.readouterr().err
    assert main(["convert", "original", "--checkpoint", str(tmp_path / "wukong.ckpt"), "--variant", "no-such-preset",
                 "--out", str(tmp_path / "x")]) == 2
    assert "Unknown preset 'no-such-preset'" in capsys.readouterr().err
    assert main(["push", "--model", str(tmp_path), "--repo-id", "org/x", "--dry-run", str(tmp_path / "y")]) == 2
    assert "has no config.json" in capsys.readouterr().err
