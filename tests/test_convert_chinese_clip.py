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


def test_conversion_keeps_the_source_image_processor(tmp_path):
    """OFA-Sys configs squash to the square size without a centre crop: the converted model must see those pixels."""
    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor, ChineseCLIPImageProcessor

    source = tiny_chinese_clip()
    source.save_pretrained(tmp_path / "cc")
    squash = ChineseCLIPImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32},
                                       do_center_crop=False)
    squash.save_pretrained(tmp_path / "cc")
    convert_chinese_clip(tmp_path / "cc", tmp_path / "out")
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    ramp = np.broadcast_to(np.linspace(0, 255, 640)[None, :, None], (360, 640, 3))  # dark left, bright right
    image = Image.fromarray(ramp.astype("uint8"))
    expected = squash(image, return_tensors="pt")["pixel_values"]
    got = processor(images=[image])["pixel_values"]
    assert torch.equal(got, expected)
    default = WukongProcessor.from_defaults(32)(images=[image])["pixel_values"]
    assert (default - expected).abs().max() > 0.5  # the default (short side + centre crop) would differ a lot
    # Without an image processor beside the source, the released Wukong preprocessing is used and noted.
    source.save_pretrained(tmp_path / "bare")
    report = convert_chinese_clip(tmp_path / "bare", tmp_path / "out2")
    assert any("no image processor beside the source" in note for note in report.notes)
