"""A tiny random ChineseCLIPModel converts to the Wukong global form with equal logits."""

import pytest
import torch
from transformers import ChineseCLIPConfig, ChineseCLIPModel

from wukong_hf import WukongModel, WukongProcessor
from wukong_hf.convert import chinese_clip_config_to_wukong, chinese_clip_to_wukong, convert_chinese_clip
from wukong_hf.processing_wukong import load_chinese_vocab


def tiny_chinese_clip(seed=0) -> ChineseCLIPModel:
    torch.manual_seed(seed)
    config = ChineseCLIPConfig(
        text_config=dict(vocab_size=21128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    return ChineseCLIPModel(config).eval()


def test_converted_chinese_clip_gives_the_same_logits(tmp_path):
    source = tiny_chinese_clip()
    source.save_pretrained(tmp_path / "cc")
    (tmp_path / "cc" / "vocab.txt").write_text("\n".join(load_chinese_vocab()), encoding="utf-8")
    report = convert_chinese_clip(tmp_path / "cc", tmp_path / "out")
    assert set(report.mapped) == set(source.state_dict())
    model = WukongModel.from_pretrained(tmp_path / "out").eval()
    processor = WukongProcessor.from_pretrained(tmp_path / "out")
    assert model.config.similarity == "global" and model.config.text_pooling == "cls"
    assert processor.max_length == 52
    text = processor(text=["一只猫", "两条狗在公园里玩飞盘"])
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
        theirs = source(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
    torch.testing.assert_close(ours.logits_per_image, theirs.logits_per_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.logits_per_text, theirs.logits_per_text, atol=1e-5, rtol=0)


def test_config_mapping_and_shape_mismatch_message():
    source = tiny_chinese_clip()
    config = chinese_clip_config_to_wukong(source.config)
    assert config.text_config.model_type == "bert" and config.vision_config.model_type == "clip_vision_model"
    source.visual_projection = torch.nn.Linear(32, 8, bias=False)  # disagrees with projection_dim=16
    with pytest.raises(ValueError, match=r"visual_projection.weight has shape \(8, 32\), WukongModel expects \(16, 32\)"):
        chinese_clip_to_wukong(source)


def test_missing_source_folder_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot load a ChineseCLIPModel from .*nothing-here"):
        convert_chinese_clip(tmp_path / "nothing-here", tmp_path / "out")
    assert not (tmp_path / "out").exists()
