"""Converted released checkpoints score exactly as the released evaluation code (issue 13).

Each released layout (global, token-wise, token-wise with token reduction; ViT and Swin) is built at
tiny size from a random checkpoint in the official key layout (every constant perturbed), converted
with `convert_original_checkpoint` (official scoring rules by default), loaded with AutoModel and
compared in float64 with the plain-torch reference forward of the released architecture
(test_convert_original) scored by the reference rules in official_reference.py. Tolerances:
scores and probabilities within 1e-6 relative to the largest one of their matrix (the Swin
converter folds the head bias in float32, which moves a score near 0 by ~1e-8 absolute); 0 for
token ids and pixel values.
"""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from official_reference import (
    official_global_scores,
    official_pixels,
    official_token_wise_scores,
    official_tokenize,
    official_zero_shot_probabilities,
)
from PIL import Image
from test_convert_original import official_state_dict, reference_image_tokens, reference_text_tokens, reference_token_reduction
from transformers import AutoModel, AutoProcessor

from wukong_hf import SimilarityRule, WukongModel, WukongProcessor, preset_config
from wukong_hf.convert import convert_original_checkpoint
from wukong_hf.evaluation.zero_shot import ensemble_class_scores
from wukong_hf.processing_wukong import load_chinese_vocab

CAPTIONS = ["一只猫", "一条在草地上奔跑的小狗", "夜晚城市的灯光与高楼大厦", "我[MASK]你", "",
            "iPhone 15 Pro Max 256GB 手机壳，全网最低价！！", "😀🐱 可爱的猫咪表情包"]
CLASSES = ["猫", "狗", "飞机"]
TEMPLATES = ["{}", "一张{}的照片。", "{}的素描。", "一张模糊的{}照片"]
LAYOUTS = {
    "vit-global": dict(tower="vit", similarity="global", num_reduced_tokens=None),
    "vit-token-wise": dict(tower="vit", similarity="token_wise", num_reduced_tokens=None),
    "vit-token-reduced": dict(tower="vit", similarity="token_wise", num_reduced_tokens=4),
    "swin-global": dict(tower="swin", similarity="global", num_reduced_tokens=None),
    "swin-token-wise": dict(tower="swin", similarity="token_wise", num_reduced_tokens=None),
    "swin-token-reduced": dict(tower="swin", similarity="token_wise", num_reduced_tokens=4),
}
def assert_close(actual, expected, rel=1e-6):
    """max |actual - expected| <= rel * max |expected| (norm-wise relative error)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    error, scale = float((actual - expected).abs().max()), float(expected.abs().max())
    assert error <= rel * scale, f"max error {error:.3g} exceeds {rel} x max |expected| {scale:.3g}"


def _config(layout):
    spec = dict(LAYOUTS[layout])
    tower = spec.pop("tower")
    if tower == "swin":
        spec.update(vision_config=preset_config("tiny-swin").vision_config.to_dict(), image_pooling="mean")
    return tower, preset_config("tiny-reduced", **spec)


def _swin_to_official(key: str) -> str:
    # timm puts a stage's downsample at its start, the released (Microsoft) Swin at the previous stage's end.
    return re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)


def _official_checkpoint(tower, config, seed=7):
    """A random checkpoint in the released key layout; every weight and constant perturbed."""
    sd = official_state_dict(preset_config("tiny-reduced", num_reduced_tokens=config.num_reduced_tokens), seed=seed)
    sd["loss.logit_scale"] = torch.tensor(3.1)  # the released evaluation discards it
    if tower == "vit":
        return sd
    sd = {k: v for k, v in sd.items() if not k.startswith("visual.") or "token_learner" in k}
    g = torch.Generator().manual_seed(seed)
    trunk = WukongModel(config).vision_model.timm_model
    for key, value in trunk.state_dict().items():
        if value.is_floating_point():
            sd[f"visual.{_swin_to_official(key)}"] = value + 0.05 * torch.randn(value.shape, generator=g)
    sd["visual.head.weight"] = 0.2 * torch.randn(config.projection_dim, trunk.num_features, generator=g)
    sd["visual.head.bias"] = 0.5 * torch.randn(config.projection_dim, generator=g)
    return sd


def _reference_image_tokens(tower, config, sd, pixels):
    """(B, n1, D) unnormalised image tokens the release scores ([CLS] dropped for ViT), and its global feature."""
    if tower == "vit":
        tokens = reference_image_tokens(sd, pixels, 4, config.token_reduction_groups)
        return tokens[:, 1:], tokens[:, 0]
    trunk = WukongModel(config).vision_model.timm_model.double().eval()
    trunk.load_state_dict({k.removeprefix("visual."): v for k, v in
                           ((re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", k), v)
                            for k, v in sd.items() if k.startswith("visual.") and not k.startswith(("visual.head", "visual.token_learner")))},
                          strict=False)
    tokens = trunk.forward_features(pixels).flatten(1, 2) @ sd["visual.head.weight"].t() + sd["visual.head.bias"]
    pooled = tokens.mean(1)
    if config.num_reduced_tokens:
        side = int(tokens.shape[1] ** 0.5)
        tokens = reference_token_reduction(sd, tokens.reshape(tokens.shape[0], side, side, -1), config.token_reduction_groups)
    return tokens, pooled


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """layout -> (tower, config, float64 official checkpoint, converted model in float64, its processor)."""
    out = {}
    root = tmp_path_factory.mktemp("official")
    for layout in LAYOUTS:
        tower, config = _config(layout)
        sd = _official_checkpoint(tower, config)
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, root / f"{layout}.ckpt")
        convert_original_checkpoint(root / f"{layout}.ckpt", config, root / layout)
        model = AutoModel.from_pretrained(root / layout).double().eval()
        out[layout] = (tower, config, {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}, model,
                       AutoProcessor.from_pretrained(root / layout))
    return out


def _images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(45, 33), (32, 32), (31, 70)]
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")) for w, h in sizes[:n]]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_similarity_matches_the_released_scoring_in_both_directions(converted, layout):
    tower, config, sd, model, processor = converted[layout]
    assert model.config.token_wise_padding == "zero"  # converted presets default to the official rules
    images = _images()
    pixels = processor(images=images)["pixel_values"].double()
    ids = processor(text=CAPTIONS)["input_ids"]
    assert ids.shape[1] == 32
    with torch.no_grad():
        image = model.encode_image(pixels)
        text = model.encode_text(ids, (ids > 0).long())
        ours = model.similarity(image, text)
        ref_image, ref_pooled = _reference_image_tokens(tower, config, sd, pixels)
        ref_text = reference_text_tokens(sd, ids, 4)
        if config.similarity == "global":
            sep = ref_text[torch.arange(len(ids)), (ids > 0).sum(-1) - 1]
            reference = official_global_scores(F.normalize(ref_pooled, dim=-1), F.normalize(sep, dim=-1))
        else:
            reference = official_token_wise_scores(F.normalize(ref_image, dim=-1), F.normalize(ref_text, dim=-1), ids)
        logits = model(input_ids=ids, attention_mask=(ids > 0).long(), pixel_values=pixels)
    assert_close(ours[0], reference[0])
    assert_close(ours[1], reference[1])
    scale = model.inverse_temperature.detach()
    assert_close(logits.logits_per_image, scale * reference[0])
    assert_close(logits.logits_per_text, scale * reference[1])
    if config.similarity == "token_wise":
        paper_i2t, paper_t2i = SimilarityRule("token_wise", "ignore").scores(image, text)
        assert_close(paper_t2i, reference[1])  # text->image is the same under both rules
        if config.num_reduced_tokens is None:
            # Not vacuous: the paper's rule (padding ignored) gives other image->text scores on this model.
            # (The 4 reduced tokens of a random reduction module are weighted means that seldom see only
            # negative similarities; test_similarity checks the rule on such tokens directly.)
            assert ((paper_i2t - reference[0]).abs() > 1e-3).any(), "the zero-padding rule changed no score"


@pytest.mark.parametrize("layout", ["vit-global", "vit-token-wise", "vit-token-reduced", "swin-token-wise"])
def test_zero_shot_ensemble_matches_the_released_code(converted, layout):
    tower, config, sd, model, processor = converted[layout]
    prompts = [t.format(c) for c in CLASSES for t in TEMPLATES]
    pixels = processor(images=_images())["pixel_values"].double()
    ids = processor(text=prompts)["input_ids"]
    with torch.no_grad():
        image, text = model.encode_image(pixels), model.encode_text(ids, (ids > 0).long())
        ours = ensemble_class_scores(image, text, len(CLASSES), model.similarity_rule, model.config.ensemble_method)
        ref_image, ref_pooled = _reference_image_tokens(tower, config, sd, pixels)
        ref_text = reference_text_tokens(sd, ids, 4)
    if config.similarity == "global":
        assert model.config.ensemble_method == "embedding"
        sep = F.normalize(ref_text[torch.arange(len(ids)), (ids > 0).sum(-1) - 1], dim=-1)
        classes = F.normalize(sep.reshape(len(CLASSES), len(TEMPLATES), -1).mean(1), dim=-1)
        expected = F.normalize(ref_pooled, dim=-1) @ classes.t()
    else:
        assert model.config.ensemble_method == "probability"
        expected = official_zero_shot_probabilities(F.normalize(ref_image, dim=-1), F.normalize(ref_text, dim=-1), ids,
                                                    len(CLASSES))
        assert_close(ours.sum(1), torch.ones(len(ours), dtype=ours.dtype))
    assert_close(ours, expected)


TRICKY = [
    "一只猫", "我[MASK]你", "[PAD]", "[CLS][SEP][UNK]", "", "   ",
    "iPhone 15 Pro Max 256GB 手机壳，全网最低价！！", "Ｆｕｌｌ　ｗｉｄｔｈ：１２３（全角）",
    "😀🐱 可爱的猫咪表情包🎉", "Café naïve résumé ÀÉÎ", "tab\tnew\nline\r end\u200b zero-width",
    "长" * 50, "abc" * 60, "2022年3月5日下午3点45分，北京市朝阳区", "“引号”‘单引号’《书名号》【括号】…—·",
    "hello-world_foo.bar/baz?x=1&y=2#frag", "ＡＢＣ ａｂｃ ＡｂＣ", "\u0000control\u0007chars\ufffd",
    "private\ue000use\U000f0000 and 𠀋𪚥 rare CJK", "한국어 日本語のテキスト ру́сский",
]


def test_token_ids_match_the_released_tokenizer_for_tricky_captions(tmp_path):
    vocab = load_chinese_vocab()
    expected = torch.tensor([official_tokenize(t, vocab) for t in TRICKY])
    processor = WukongProcessor.from_defaults()
    assert torch.equal(processor(text=TRICKY)["input_ids"], expected)
    # The same ids after save/reload, and through the tokenizer alone (what the transformers pipeline calls).
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert torch.equal(reloaded(text=TRICKY)["input_ids"], expected)
    direct = reloaded.tokenizer(TRICKY, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    assert torch.equal(direct["input_ids"], expected)
    assert expected[1].tolist()[:4] != [101, 2769, 103, 872]  # "[MASK]" is not the mask token


@pytest.mark.parametrize("size", [(640, 360), (225, 300), (301, 299), (1000, 223), (80, 50), (224, 224), (223, 1)])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "CMYK", "P"])
def test_pixel_values_are_bit_identical_to_torchvision_on_pil(tmp_path, size, mode):
    rng = np.random.default_rng(size[0] * size[1])
    image = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")).convert(mode)
    expected = official_pixels([image])
    processor = WukongProcessor.from_defaults()
    assert torch.equal(processor(images=[image])["pixel_values"], expected)
    processor.save_pretrained(tmp_path)
    assert torch.equal(AutoProcessor.from_pretrained(tmp_path).image_processor(image)["pixel_values"], expected)
