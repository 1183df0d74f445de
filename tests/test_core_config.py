"""WukongConfig: presets, validation, sub-config round trips."""

import pytest
import torch

from wukong_hf import WukongConfig, WukongModel, list_presets, preset_config
from wukong_hf.presets import preset_description


def test_every_preset_builds_a_config_with_a_description():
    names = list_presets()
    assert len(names) >= 27
    for name in names:
        config = preset_config(name)
        assert config.model_type == "wukong"
        assert preset_description(name)
        assert config.text_config.vocab_size == 21128
        assert config.max_text_length == 32


@pytest.mark.parametrize(
    "name, vision_params_millions",
    [
        ("wukong-vit-l-14", 303),
        ("wukong-vit-b-32-global", 87),
        ("paper-swin-l-token-wise", 195),
        ("paper-resnet-50-global", 38),
    ],
)
def test_released_and_paper_presets_have_the_paper_tower_sizes(name, vision_params_millions):
    config = preset_config(name)
    with torch.device("meta"):
        model = WukongModel(config)
    vision = sum(p.numel() for p in model.vision_model.parameters()) / 1e6
    assert vision == pytest.approx(vision_params_millions, rel=0.05)
    text = model.text_model.config
    assert text.num_hidden_layers == 12
    if name.startswith("wukong-vit-l-14"):
        assert (text.hidden_size, text.num_attention_heads) == (768, 12)
        assert config.num_reduced_tokens == 24 and config.projection_dim == 256
        assert model.vision_model.timm_model.patch_embed.patch_size == (14, 14)
        assert len(model.vision_model.timm_model.blocks) == 24


def test_released_and_paper_token_choices_differ_as_documented():
    released, paper = preset_config("wukong-vit-b-32-filip"), preset_config("paper-vit-b-32-token-wise")
    assert released.text_config.model_type == "clip_text_model" and released.text_pooling == "eos"
    assert released.token_wise_text_cls and released.token_wise_text_sep and not released.token_wise_image_cls
    assert paper.text_config.model_type == "bert" and paper.text_pooling == "cls"
    assert not paper.token_wise_text_cls and paper.token_wise_text_sep
    # Scoring: released presets score as the released evaluation code, paper presets as the paper.
    assert released.token_wise_padding == "zero" and released.ensemble_method == "probability"
    assert preset_config("wukong-vit-b-32-global").ensemble_method == "embedding"
    assert paper.token_wise_padding == "ignore" and paper.ensemble_method == "similarity"
    assert "lock_image_tower" not in paper.to_dict()  # LiT is a training decision (configs/*.yaml)
    assert preset_config("wukong-vit-b-32-global").projection_dim == 512
    assert preset_config("wukong-vit-l-14-global").projection_dim == 768
    assert preset_config("wukong-swin-l").image_pooling == "mean"


def test_logit_scale_defaults_to_one_over_0_07():
    config = WukongConfig(vision_config=preset_config("tiny-global").vision_config, image_size=32)
    assert torch.tensor(config.logit_scale_init_value).exp().item() == pytest.approx(1 / 0.07)
    assert config.logit_scale_max == 100


def test_preset_overrides_and_dict_round_trip():
    config = preset_config("tiny-token-wise", similarity="global")
    assert config.similarity == "global"
    again = WukongConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    assert again.vision_config.model_args["img_size"] == 32


def test_unknown_similarity_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match=r"Unknown similarity 'cosine'.*'global', 'token_wise'"):
        preset_config("tiny-token-wise", similarity="cosine")


def test_unknown_tower_is_rejected():
    text = preset_config("tiny-token-wise").text_config.to_dict()
    text["model_type"] = "roberta"
    with pytest.raises(ValueError, match=r"Unknown text tower .*'roberta'.*'bert', 'clip_text_model'"):
        preset_config("tiny-token-wise", text_config=text)
    vision = {"model_type": "dinov2"}
    with pytest.raises(ValueError, match=r"Unknown image tower .*'dinov2'"):
        preset_config("tiny-token-wise", vision_config=vision)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"Unknown preset 'vit-z'.*tiny-token-wise"):
        preset_config("vit-z")


def test_image_size_must_agree_with_the_tower():
    with pytest.raises(ValueError, match=r"img_size'\]=32 disagrees with image_size=64"):
        preset_config("tiny-token-wise", image_size=64)


def test_token_reduction_needs_divisible_groups():
    with pytest.raises(ValueError, match="divisible by token_reduction_groups"):
        preset_config("tiny-reduced", token_reduction_groups=5)


def test_demo_preset_tokens_carry_no_position_and_round_trip(tmp_path):
    # The demo's image tower has no attention blocks and no position embedding: changing one 8x8
    # patch changes that patch's token and no other, and two patches with the same pixels get the
    # same token wherever they are. Its text tower has no position embeddings either: a character
    # gets the same token embedding wherever it stands. Both survive save / reload, frozen at zero.
    from transformers import AutoModel

    torch.manual_seed(0)
    model = WukongModel(preset_config("demo-token-wise")).eval()
    pixels = torch.randn(1, 3, 64, 64)
    pixels[..., 8:16, 8:16] = pixels[..., 40:48, 24:32]  # patch (1, 1) copies patch (5, 3)
    changed = pixels.clone()
    changed[..., 16:24, 32:40] += 1.0  # patch (2, 4)
    with torch.no_grad():
        before = model.encode_image(pixels).token_embeds[0].view(8, 8, -1)
        after = model.encode_image(changed).token_embeds[0].view(8, 8, -1)
    moved = (after - before).abs().amax(-1) > 1e-6
    assert moved[2, 4] and moved.sum() == 1
    torch.testing.assert_close(before[1, 1], before[5, 3])

    ab, ba = torch.tensor([[101, 5273, 676, 102]]), torch.tensor([[101, 676, 5273, 102]])
    with torch.no_grad():
        ab_tokens, ba_tokens = model.encode_text(ab).token_embeds[0], model.encode_text(ba).token_embeds[0]
    torch.testing.assert_close(ab_tokens[1], ba_tokens[2])  # the same character, other place
    torch.testing.assert_close(ab_tokens[0], ba_tokens[0])  # [CLS] sees the same bag of characters

    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    positions = reloaded.text_model.embeddings.position_embeddings.weight
    assert not positions.requires_grad and not positions.any()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval().encode_text(ab).token_embeds, model.encode_text(ab).token_embeds)


def test_text_positions_can_only_be_dropped_from_a_bert_tower():
    with pytest.raises(ValueError, match="needs a BERT text tower.*clip_text_model"):
        preset_config("wukong-vit-b-32", text_position_embeddings=False)
