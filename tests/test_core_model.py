"""WukongModel: shapes, both heads, padding invariance, reference formula, LiT, attention backends, bad input."""

import json

import pytest
import torch
from conftest import make_tiny, random_images

from wukong_hf import WukongModel, preset_config

CAPTIONS = ["蓝色背景上的一个红色圆形", "一只猫", "绿色的三角形在白色背景上", "飞机"]
TOWER_PRESETS = ["tiny-token-wise", "tiny-global", "tiny-reduced", "tiny-swin", "tiny-clip-vision", "tiny-resnet"]


def _inputs(processor, n_images=3, captions=CAPTIONS, seed=0):
    return processor(text=captions, images=random_images(n_images, seed=seed))


@pytest.mark.parametrize("preset", TOWER_PRESETS)
def test_forward_shapes_and_finite_loss_for_every_tower(preset):
    model, processor = make_tiny(preset)
    inputs = processor(text=CAPTIONS[:2], images=random_images(2))
    out = model(**inputs, return_loss=True)
    assert out.logits_per_image.shape == (2, 2) and out.logits_per_text.shape == (2, 2)
    assert torch.isfinite(out.loss)
    dim = model.config.projection_dim
    assert out.image_embeds.shape == (2, dim) and out.text_embeds.shape == (2, dim)
    assert torch.allclose(out.image_token_embeds.norm(dim=-1), torch.ones(()), atol=1e-5)
    assert out.text_token_mask.shape == inputs["input_ids"].shape


def test_non_square_logits_and_direction_of_each_head(tiny_token_wise, tiny_global):
    for model, processor in (tiny_token_wise, tiny_global):
        out = model(**_inputs(processor, n_images=3))
        assert out.logits_per_image.shape == (3, 4) and out.logits_per_text.shape == (4, 3)
    model, processor = tiny_global
    out = model(**_inputs(processor))
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.t())
    model, processor = tiny_token_wise
    out = model(**_inputs(processor))
    assert not torch.allclose(out.logits_per_text, out.logits_per_image.t(), atol=1e-4)


def _paper_reference(image_tokens, image_mask, text_tokens, text_mask):
    """Plain loops over the paper's formula: s^I_ij = mean_k max_r <x_k, y_r>, s^T_ji = mean_r max_k <y_r, x_k>."""
    n_img, n_txt = image_tokens.shape[0], text_tokens.shape[0]
    i2t, t2i = torch.zeros(n_img, n_txt), torch.zeros(n_txt, n_img)
    for i in range(n_img):
        xs = [image_tokens[i, k] for k in range(image_tokens.shape[1]) if image_mask[i, k]]
        for j in range(n_txt):
            ys = [text_tokens[j, r] for r in range(text_tokens.shape[1]) if text_mask[j, r]]
            i2t[i, j] = sum(max(float(x @ y) for y in ys) for x in xs) / len(xs)
            t2i[j, i] = sum(max(float(y @ x) for x in xs) for y in ys) / len(ys)
    return i2t, t2i


@pytest.mark.parametrize("preset, text_cls", [("tiny-token-wise", False), ("tiny-reduced", True)])
def test_token_wise_logits_match_the_paper_formula_by_plain_loops(preset, text_cls):
    model, processor = make_tiny(preset)
    inputs = _inputs(processor)
    with torch.no_grad():
        out = model(**inputs)
    ids = inputs["input_ids"]
    lengths = inputs["attention_mask"].sum(-1)
    # Which text tokens count: the paper drops [CLS]; the released code keeps it; [SEP] is kept by both.
    text_mask = inputs["attention_mask"].bool().clone()
    text_mask[:, 0] = text_cls
    assert bool((ids[torch.arange(len(ids)), lengths - 1] == 102).all())
    assert torch.equal(out.text_token_mask, text_mask)
    assert not out.image_token_mask[:, 0].any() and out.image_token_mask[:, 1:].all()
    i2t, t2i = _paper_reference(out.image_token_embeds, out.image_token_mask, out.text_token_embeds, text_mask)
    scale = model.inverse_temperature.item()
    torch.testing.assert_close(out.logits_per_image, scale * i2t, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.logits_per_text, scale * t2i, atol=1e-4, rtol=1e-4)


def test_image_cls_and_text_sep_options_change_the_counted_tokens():
    model, processor = make_tiny("tiny-token-wise", token_wise_image_cls=True, token_wise_text_sep=False)
    inputs = _inputs(processor)
    out = model(**inputs)
    assert out.image_token_mask.all()
    lengths = inputs["attention_mask"].sum(-1)
    assert not out.text_token_mask[torch.arange(4), lengths - 1].any()
    assert int(out.text_token_mask.sum()) == int(inputs["attention_mask"].sum()) - 2 * 4


@pytest.mark.parametrize("preset", ["tiny-token-wise", "tiny-global", "tiny-reduced"])
def test_padding_never_changes_a_score(preset):
    model, processor = make_tiny(preset)
    images = random_images(2)
    short = processor(text=CAPTIONS, images=images, padding="longest")
    full = processor(text=CAPTIONS, images=images)  # padded to 32
    assert short["input_ids"].shape[1] < full["input_ids"].shape[1] == 32
    with torch.no_grad():
        a, b = model(**short), model(**full)
        # One caption alone (no padding at all) scores the same as inside a padded batch.
        alone = model(**processor(text=CAPTIONS[1:2], images=images, padding="longest"))
    torch.testing.assert_close(a.logits_per_image, b.logits_per_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.logits_per_text, b.logits_per_text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone.logits_per_image[:, 0], b.logits_per_image[:, 1], atol=1e-5, rtol=1e-5)


def test_cached_features_score_like_forward(tiny_token_wise):
    model, processor = tiny_token_wise
    inputs = _inputs(processor)
    with torch.no_grad():
        out = model(**inputs)
        image = model.encode_image(inputs["pixel_values"][:2])
        image2 = model.encode_image(inputs["pixel_values"][2:])
        text = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
        per_image_a, _ = model.score(image, text)
        per_image_b, per_text_b = model.score(image2, text)
    torch.testing.assert_close(torch.cat([per_image_a, per_image_b]), out.logits_per_image)
    torch.testing.assert_close(per_text_b, out.logits_per_text[:, 2:])
    feats = model.get_image_features(inputs["pixel_values"])
    torch.testing.assert_close(feats.pooler_output, out.image_embeds)


def test_logit_scale_is_learnable_and_clamped_at_100(tiny_global):
    model, processor = tiny_global
    assert model.logit_scale.requires_grad
    assert model.inverse_temperature.item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.inverse_temperature.item() == pytest.approx(100.0)


def test_loss_is_the_symmetric_infonce():
    model, processor = make_tiny("tiny-token-wise")
    out = model(**processor(text=CAPTIONS[:3], images=random_images(3)), return_loss=True)
    labels = torch.arange(3)
    ce = torch.nn.functional.cross_entropy
    expected = 0.5 * (ce(out.logits_per_image, labels) + ce(out.logits_per_text, labels))
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.text_projection.weight.grad is not None and model.logit_scale.grad is not None


@pytest.mark.parametrize("preset", ["tiny-token-wise", "tiny-reduced"])
def test_eager_and_sdpa_attention_give_the_same_outputs(preset):
    torch.manual_seed(0)
    config = preset_config(preset)
    sdpa = WukongModel(config).eval()
    eager = WukongModel._from_config(preset_config(preset), attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.text_model.config._attn_implementation == "sdpa"
    assert eager.text_model.config._attn_implementation == "eager"
    _, processor = make_tiny(preset)
    inputs = _inputs(processor)
    with torch.no_grad():
        a, b = sdpa(**inputs), eager(**inputs)
    torch.testing.assert_close(a.logits_per_image, b.logits_per_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.logits_per_text, b.logits_per_text, atol=1e-5, rtol=1e-5)


def test_locked_image_tower_gets_no_gradient_and_keeps_its_weights():
    from wukong_hf.training.step import DualEncoderStep

    model, processor = make_tiny("tiny-token-wise")
    step = DualEncoderStep(model, lock_image_tower=True)  # LiT is the training run's decision
    step.train()
    assert not model.vision_model.training and model.text_model.training
    before = {k: v.clone() for k, v in model.vision_model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    inputs = processor(text=CAPTIONS[:2], images=random_images(2))
    text_before = model.text_projection.weight.clone()
    for _ in range(2):
        image, text, scale, tower = step(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
        assert not tower.tokens.requires_grad
        loss = torch.nn.functional.cross_entropy(scale * image.embeds @ text.embeds.t(), torch.arange(2))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(p.grad is None for p in model.vision_model.parameters())
    for key, value in model.vision_model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not torch.equal(model.text_projection.weight, text_before)
    assert model.visual_projection.weight.requires_grad and model.logit_scale.requires_grad


def test_a_saved_model_comes_back_trainable_and_old_lock_keys_still_load(tmp_path):
    from wukong_hf.training.step import DualEncoderStep

    model, processor = make_tiny("tiny-token-wise")
    DualEncoderStep(model, lock_image_tower=True)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "lock_image_tower" not in config  # the lock is the training run's, never the model's
    again = WukongModel.from_pretrained(tmp_path)
    assert all(p.requires_grad for p in again.parameters())
    again.train()
    assert again.vision_model.training
    for key, value in model.vision_model.state_dict().items():
        assert torch.equal(value, again.vision_model.state_dict()[key])
    # A config.json written before the lock moved to training still loads (the key is dropped).
    (tmp_path / "config.json").write_text(json.dumps({**config, "lock_image_tower": True}))
    old = WukongModel.from_pretrained(tmp_path)
    assert not hasattr(old.config, "lock_image_tower") and all(p.requires_grad for p in old.parameters())


def test_wrong_image_size_is_explained(tiny_token_wise):
    model, processor = tiny_token_wise
    ids = processor(text=CAPTIONS[:1])
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(batch, 3, 32, 32\).*got \(1, 3, 64, 64\)"):
        model(**ids, pixel_values=torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"got \(1, 4, 32, 32\)"):
        model(**ids, pixel_values=torch.zeros(1, 4, 32, 32))


def test_mismatched_batch_sizes_for_the_loss_are_explained(tiny_token_wise):
    model, processor = tiny_token_wise
    with pytest.raises(ValueError, match="return_loss needs one text per image: got 3 images and 4 texts"):
        model(**_inputs(processor, n_images=3), return_loss=True)


def test_ids_past_the_vocabulary_and_overlong_text_are_explained(tiny_token_wise):
    model, processor = tiny_token_wise
    pixels = processor(images=random_images(1))["pixel_values"]
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 21128\).*max 30000"):
        model(input_ids=torch.tensor([[101, 30000, 102]]), pixel_values=pixels)
    with pytest.raises(ValueError, match="40 tokens but the text tower takes at most 32"):
        model(input_ids=torch.full((1, 40), 700), pixel_values=pixels)
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(input_ids=torch.tensor([[101, 700, 102]]), attention_mask=torch.ones(1, 4), pixel_values=pixels)
    with pytest.raises(ValueError, match="needs both input_ids and pixel_values"):
        model(pixel_values=pixels)


@pytest.mark.parametrize("preset", ["tiny-clip-vision", "tiny-token-wise"])
def test_hidden_states_and_attentions_reach_the_towers(preset):
    model, processor = make_tiny(preset)
    inputs = _inputs(processor, n_images=2)
    plain = model(**inputs)
    assert plain.text_model_output.hidden_states is None
    out = model(**inputs, output_hidden_states=True)
    layers = model.config.text_config.num_hidden_layers
    assert len(out.text_model_output.hidden_states) == layers + 1
    assert len(out.vision_model_output.hidden_states) >= 2
    torch.testing.assert_close(out.logits_per_image, plain.logits_per_image)
    if preset == "tiny-clip-vision":  # attention maps need eager attention (SDPA does not return them)
        eager = WukongModel._from_config(model.config, attn_implementation="eager").eval()
        eager.load_state_dict(model.state_dict())
        attn = eager(**inputs, output_attentions=True)
        assert len(attn.text_model_output.attentions) == layers and len(attn.vision_model_output.attentions) == 2
    else:
        with pytest.raises(ValueError, match="output_attentions is not available for timm image towers"):
            model(**inputs, output_attentions=True)
