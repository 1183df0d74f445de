"""Official Wukong checkpoints (OpenAI-CLIP layout) -> WukongModel, checked against an independent
plain-torch forward of the released architecture written from docs/wukong-facts.md."""

import math
import pickle
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from official_reference import official_global_scores, official_token_wise_scores
from torch import nn

from wukong_hf import WukongModel, WukongProcessor, preset_config
from wukong_hf.convert import CheckpointFormatError, convert_original_checkpoint, load_state_dict_file

CAPTIONS = ["一只猫", "一条在草地上奔跑的小狗", "夜晚城市的灯光与高楼大厦"]


# ----- a random checkpoint in the official key layout --------------------------------------------
def official_state_dict(config, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2, offset=0.0):
        return torch.randn(*shape, generator=g) * scale + offset

    def block(prefix, width, hidden):
        return {
            f"{prefix}attn.in_proj_weight": rnd(3 * width, width),
            f"{prefix}attn.in_proj_bias": rnd(3 * width),
            f"{prefix}attn.out_proj.weight": rnd(width, width),
            f"{prefix}attn.out_proj.bias": rnd(width),
            f"{prefix}ln_1.weight": rnd(width, offset=1.0),
            f"{prefix}ln_1.bias": rnd(width),
            f"{prefix}ln_2.weight": rnd(width, offset=1.0),
            f"{prefix}ln_2.bias": rnd(width),
            f"{prefix}mlp.c_fc.weight": rnd(hidden, width),
            f"{prefix}mlp.c_fc.bias": rnd(hidden),
            f"{prefix}mlp.c_proj.weight": rnd(width, hidden),
            f"{prefix}mlp.c_proj.bias": rnd(width),
        }

    args = config.vision_config.model_args
    width, patch, depth = args["embed_dim"], args["patch_size"], args["depth"]
    grid = config.image_size // patch
    dim = config.projection_dim
    sd = {
        "visual.conv1.weight": rnd(width, 3, patch, patch),
        "visual.class_embedding": rnd(width),
        "visual.positional_embedding": rnd(grid * grid + 1, width),
        "visual.ln_pre.weight": rnd(width, offset=1.0),
        "visual.ln_pre.bias": rnd(width),
        "visual.ln_post.weight": rnd(width, offset=1.0),
        "visual.ln_post.bias": rnd(width),
        "visual.proj": rnd(width, dim),
    }
    for n in range(depth):
        sd.update(block(f"visual.transformer.resblocks.{n}.", width, 4 * width))
    text = config.text_config
    tw = text.hidden_size
    sd.update({
        "transformer.token_embedding.weight": rnd(text.vocab_size, tw),
        "transformer.positional_embedding": rnd(text.max_position_embeddings, tw),
        "transformer.ln_final.weight": rnd(tw, offset=1.0),
        "transformer.ln_final.bias": rnd(tw),
        "transformer.text_projection": rnd(tw, dim),
        "loss.logit_scale": torch.tensor(math.log(1 / 0.07)),
    })
    for n in range(text.num_hidden_layers):
        sd.update(block(f"transformer.resblocks.{n}.", tw, text.intermediate_size))
    if config.num_reduced_tokens:
        groups, k = config.token_reduction_groups, config.num_reduced_tokens
        sd.update({
            "visual.token_learner.norm.weight": rnd(dim, offset=1.0),
            "visual.token_learner.norm.bias": rnd(dim),
            "visual.token_learner.attention_maps.0.weight": rnd(dim, dim // groups, 1, 1),
            "visual.token_learner.attention_maps.1.weight": rnd(k, dim, 1, 1),
            "visual.token_learner.feat_conv.weight": rnd(dim, dim // groups, 1, 1),
        })
    return sd


# ----- independent reference forward of the released architecture --------------------------------
def _layer_norm(x, sd, prefix):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps=1e-5)


def _resblocks(x, sd, prefix, heads, mask=None):
    n = 0
    while f"{prefix}{n}.ln_1.weight" in sd:
        p = f"{prefix}{n}."
        width = x.shape[-1]
        attn = nn.MultiheadAttention(width, heads, batch_first=True, dtype=x.dtype)
        attn.load_state_dict({
            "in_proj_weight": sd[p + "attn.in_proj_weight"], "in_proj_bias": sd[p + "attn.in_proj_bias"],
            "out_proj.weight": sd[p + "attn.out_proj.weight"], "out_proj.bias": sd[p + "attn.out_proj.bias"],
        })
        h = _layer_norm(x, sd, p + "ln_1")
        x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = F.linear(_layer_norm(x, sd, p + "ln_2"), sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU
        x = x + F.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
        n += 1
    return x


def reference_token_reduction(sd, patches, groups):
    """(B, H, W, D) projected patch tokens -> (B, K, D) (LayerNorm, grouped 1x1 convs, softmax over space)."""
    normed = _layer_norm(patches, sd, "visual.token_learner.norm").permute(0, 3, 1, 2)
    maps = F.conv2d(F.conv2d(normed, sd["visual.token_learner.attention_maps.0.weight"], groups=groups),
                    sd["visual.token_learner.attention_maps.1.weight"])
    weights = maps.flatten(2).softmax(dim=-1)  # (B, K, HW)
    feats = F.conv2d(patches.permute(0, 3, 1, 2), sd["visual.token_learner.feat_conv.weight"], groups=groups)
    return weights @ feats.flatten(2).transpose(1, 2)


def reference_image_tokens(sd, pixels, heads, groups):
    """(B, 1 + N or 1 + K, D): [CLS] first, then patch tokens or reduced tokens, projected, not normalised."""
    conv = sd["visual.conv1.weight"]
    x = F.conv2d(pixels, conv, stride=conv.shape[-1])
    side = x.shape[-1]
    x = x.flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    x = _resblocks(_layer_norm(x, sd, "visual.ln_pre"), sd, "visual.transformer.resblocks.", heads)
    x = _layer_norm(x, sd, "visual.ln_post") @ sd["visual.proj"]
    if "visual.token_learner.norm.weight" in sd:
        reduced = reference_token_reduction(sd, x[:, 1:].reshape(x.shape[0], side, side, -1), groups)
        x = torch.cat([x[:, :1], reduced], dim=1)
    return x


def reference_text_tokens(sd, ids, heads):
    x = sd["transformer.token_embedding.weight"][ids] + sd["transformer.positional_embedding"][: ids.shape[1]]
    causal = torch.full((ids.shape[1], ids.shape[1]), float("-inf"), dtype=x.dtype).triu(1)
    x = _resblocks(x, sd, "transformer.resblocks.", heads, mask=causal)
    return _layer_norm(x, sd, "transformer.ln_final") @ sd["transformer.text_projection"]


def reference_scores(image, text, ids, scale, token_wise, image_cls_first=True):
    """Released scoring (official_reference): global ([CLS] or mean image feature, [SEP] text feature)
    or token-wise over the full 32-token layout (text [CLS] and [SEP] count; padding offers 0)."""
    if not token_wise:
        img = F.normalize(image[:, 0] if image_cls_first else image.mean(1), dim=-1)
        txt = F.normalize(text[torch.arange(ids.shape[0]), (ids != 0).sum(-1) - 1], dim=-1)
        i2t, t2i = official_global_scores(img, txt)
        return scale * i2t, scale * t2i
    img = F.normalize(image[:, 1:] if image_cls_first else image, dim=-1)  # ViT drops the image [CLS]
    i2t, t2i = official_token_wise_scores(img, F.normalize(text, dim=-1), ids)
    return scale * i2t, scale * t2i


def reference_logits(sd, pixels, ids, token_wise, vision_heads, text_heads, groups):
    image = reference_image_tokens(sd, pixels, vision_heads, groups)
    text = reference_text_tokens(sd, ids, text_heads)
    return reference_scores(image, text, ids, sd["loss.logit_scale"].exp(), token_wise)


VARIANTS = {
    "global": dict(similarity="global", num_reduced_tokens=None),
    "token-wise": dict(similarity="token_wise", num_reduced_tokens=None),
    "token-reduced": dict(similarity="token_wise"),
}


@pytest.fixture(scope="module")
def inputs():
    processor = WukongProcessor.from_config(preset_config("tiny-reduced"))
    text = processor(text=CAPTIONS)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return pixels, text["input_ids"], text["attention_mask"]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_converted_logits_match_reference_forward(tmp_path, inputs, name):
    config = preset_config("tiny-reduced", **VARIANTS[name])
    sd = official_state_dict(config)
    path = tmp_path / "wukong.ckpt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    report = convert_original_checkpoint(path, config, tmp_path / "out")
    assert set(report.mapped) == set(sd)  # every key used
    model = WukongModel.from_pretrained(tmp_path / "out").eval()
    pixels, ids, mask = inputs
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels, attention_mask=mask)
        ref_i2t, ref_t2i = reference_logits(sd, pixels, ids, name != "global", 4, 4, config.token_reduction_groups)
    torch.testing.assert_close(out.logits_per_image, ref_i2t, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.logits_per_text, ref_t2i, atol=1e-4, rtol=0)
    assert (tmp_path / "out" / "conversion_report.json").is_file()
    assert (tmp_path / "out" / "tokenizer_config.json").is_file() or (tmp_path / "out" / "processor_config.json").is_file()


def test_numpy_pickle_release_converts_like_the_torch_file(tmp_path, inputs):
    config = preset_config("tiny-reduced")
    sd = official_state_dict(config, seed=3)
    with open(tmp_path / "wukong.pkl", "wb") as handle:
        pickle.dump({k: v.numpy() for k, v in sd.items()}, handle)
    torch.save(sd, tmp_path / "wukong.pt")
    loaded = load_state_dict_file(tmp_path / "wukong.pkl")
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    convert_original_checkpoint(tmp_path / "wukong.pkl", config, tmp_path / "a")
    convert_original_checkpoint(tmp_path / "wukong.pt", config, tmp_path / "b")
    a = WukongModel.from_pretrained(tmp_path / "a").state_dict()
    b = WukongModel.from_pretrained(tmp_path / "b").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pkl", "wb") as handle:
        pickle.dump({"visual.proj": np.zeros(2), "x": _Payload(str(marker))}, handle)
    with pytest.raises(CheckpointFormatError, match="refusing to load io.open: .* could run code"):
        load_state_dict_file(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_torch_file_with_code_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "x": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointFormatError, match="weights_only"):
        load_state_dict_file(tmp_path / "evil.pt")
    assert not marker.exists()


def test_non_array_entries_and_garbage_files_are_refused(tmp_path):
    with open(tmp_path / "list.pkl", "wb") as handle:
        pickle.dump({"a": [1, 2]}, handle)
    with pytest.raises(CheckpointFormatError, match="'a' is a list, not an array"):
        load_state_dict_file(tmp_path / "list.pkl")
    (tmp_path / "junk.bin").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointFormatError, match="not a readable checkpoint"):
        load_state_dict_file(tmp_path / "junk.bin")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_state_dict_file(tmp_path / "missing.pt")


def test_wrong_variant_unknown_keys_and_missing_reduction_are_explained(tmp_path):
    reduced = preset_config("tiny-reduced")
    sd = official_state_dict(reduced)
    torch.save(sd, tmp_path / "reduced.pt")
    with pytest.raises(ValueError, match="token reduction weights .* has no token reduction"):
        convert_original_checkpoint(tmp_path / "reduced.pt", preset_config("tiny-reduced", num_reduced_tokens=None),
                                    tmp_path / "x")
    with pytest.raises(ValueError, match=r"visual.positional_embedding has shape \(17, 32\) but variant"):
        convert_original_checkpoint(tmp_path / "reduced.pt", preset_config("tiny-reduced", image_size=64,
                                    vision_config={**reduced.vision_config.to_dict(),
                                                   "model_args": {**reduced.vision_config.model_args, "img_size": 64}}),
                                    tmp_path / "x")
    torch.save({**sd, "visual.extra_head.weight": torch.zeros(2)}, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match="maps to keys variant .* lacks: vision_model.timm_model.extra_head.weight"):
        convert_original_checkpoint(tmp_path / "extra.pt", reduced, tmp_path / "x")
    torch.save({**sd, "teacher.fc.weight": torch.zeros(2)}, tmp_path / "teacher.pt")
    with pytest.raises(ValueError, match="1 checkpoint keys have no place in variant .*teacher.fc.weight"):
        convert_original_checkpoint(tmp_path / "teacher.pt", reduced, tmp_path / "x")
    del sd["transformer.ln_final.bias"]
    torch.save(sd, tmp_path / "short.pt")
    with pytest.raises(ValueError, match="lacks 1 weights .*final_layer_norm.bias"):
        convert_original_checkpoint(tmp_path / "short.pt", reduced, tmp_path / "x")
    with pytest.raises(ValueError, match="bert text tower"):
        convert_original_checkpoint(tmp_path / "short.pt", "tiny-token-wise", tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing half-written


def _timm_swin_layout(sd):
    """Official Swin trunk keys -> timm keys (downsample back to the start of the next stage)."""
    out = {}
    for key, value in sd.items():
        if key.startswith("visual.") and not key.startswith(("visual.head", "visual.token_learner")) \
                and "relative_position_index" not in key:
            key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", key)
            out[key.removeprefix("visual.")] = value
    return out


@pytest.mark.parametrize("reduced", [False, True])
def test_swin_release_layout_converts_with_head_bias_folded(tmp_path, inputs, reduced):
    """Swin: official (Microsoft) key layout; the trunk reference is timm's Swin fed the same weights."""
    swin_vision = preset_config("tiny-swin").vision_config.to_dict()
    config = preset_config("tiny-reduced", vision_config=swin_vision, image_pooling="mean",
                           similarity="token_wise", num_reduced_tokens=4 if reduced else None)
    torch.manual_seed(5)
    trunk = WukongModel(config).vision_model.timm_model.eval()
    sd = {k: v for k, v in official_state_dict(preset_config("tiny-reduced"), seed=5).items()
          if k.startswith(("transformer.", "loss.")) or (reduced and "token_learner" in k)}
    for key, value in trunk.state_dict().items():  # timm puts downsample at the start of a stage, Swin at the end
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        sd[f"visual.{key}"] = value + 0.05 * torch.randn_like(value)
    sd["visual.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    sd["visual.head.weight"] = torch.randn(config.projection_dim, trunk.num_features) * 0.2
    sd["visual.head.bias"] = torch.randn(config.projection_dim) * 0.5
    torch.save(sd, tmp_path / "swin.pt")
    report = convert_original_checkpoint(tmp_path / "swin.pt", config, tmp_path / "out")
    assert "visual.layers.0.blocks.0.attn.relative_position_index" in report.skipped
    assert "folded" in report.mapped["visual.head.bias"]
    model = WukongModel.from_pretrained(tmp_path / "out").eval()
    reference_trunk = WukongModel(config).vision_model.timm_model.eval()
    reference_trunk.load_state_dict(_timm_swin_layout(sd))
    pixels, ids, mask = inputs
    with torch.no_grad():
        image = reference_trunk.forward_features(pixels).flatten(1, 2) @ sd["visual.head.weight"].t() + sd["visual.head.bias"]
        side = int(image.shape[1] ** 0.5)
        if reduced:
            image = reference_token_reduction(sd, image.reshape(image.shape[0], side, side, -1), 4)
        text = reference_text_tokens(sd, ids, 4)
        scale = sd["loss.logit_scale"].exp()
        out = model(input_ids=ids, pixel_values=pixels, attention_mask=mask)
        ref_i2t, ref_t2i = reference_scores(image, text, ids, scale, True, image_cls_first=False)
        torch.testing.assert_close(out.logits_per_image, ref_i2t, atol=1e-4, rtol=0)
        torch.testing.assert_close(out.logits_per_text, ref_t2i, atol=1e-4, rtol=0)
        if not reduced:  # global head of the same weights: mean of the Swin tokens
            feats = model.encode_image(pixels)
            torch.testing.assert_close(feats.embeds, F.normalize(image.mean(1), dim=-1), atol=1e-5, rtol=0)


def test_vocabulary_beside_the_checkpoint_is_used(tmp_path):
    from wukong_hf.processing_wukong import load_chinese_vocab

    config = preset_config("tiny-reduced")
    torch.save(official_state_dict(config), tmp_path / "wukong.ckpt")
    tokens = list(load_chinese_vocab())
    tokens[1] = "wukongtoken"  # [unused1] renamed: only this file's vocabulary has it
    (tmp_path / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    convert_original_checkpoint(tmp_path / "wukong.ckpt", config, tmp_path / "out")
    processor = WukongProcessor.from_pretrained(tmp_path / "out")
    assert processor.tokenizer.convert_tokens_to_ids("wukongtoken") == 1
    (tmp_path / "vocab.txt").write_text("just\nwords\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a BERT WordPiece vocab"):
        convert_original_checkpoint(tmp_path / "wukong.ckpt", config, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
