"""Symmetric InfoNCE and ContrastiveLoss on one process."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from wukong_hf import ContrastiveLoss, SimilarityRule, WukongImageFeatures, WukongTextFeatures, contrastive_loss
from wukong_hf.losses import _labels


def test_contrastive_loss_matches_formula_and_caches_labels():
    logits_i, logits_t = torch.randn(4, 4), torch.randn(4, 4)
    expected = 0.5 * sum(
        -sum(math.log(float(torch.softmax(logits[k], 0)[k])) for k in range(4)) / 4 for logits in (logits_i, logits_t)
    )
    assert abs(float(contrastive_loss(logits_i, logits_t)) - expected) < 1e-5
    assert _labels(4, logits_i.device) is _labels(4, logits_i.device)
    with pytest.raises(ValueError, match=r"as many images as texts .* shape \(2, 3\)"):
        contrastive_loss(torch.randn(2, 3), torch.randn(3, 2))


@pytest.mark.parametrize("preset", ["tiny-global", "tiny-token-wise"])
@pytest.mark.parametrize("layout", ["local", "lit"])
def test_one_process_equals_loss_on_model_scores(preset, layout):
    from conftest import make_tiny, random_images

    model, processor = make_tiny(preset)
    inputs = processor(text=["一只猫", "两只狗在草地上奔跑", "红色的汽车"], images=random_images(3), return_tensors="pt")
    image = model.encode_image(inputs["pixel_values"])
    text = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
    expected = contrastive_loss(*model.score(image, text))
    loss = ContrastiveLoss(model.similarity_rule, layout)(image, text, model.inverse_temperature)
    torch.testing.assert_close(loss, expected)


def test_bad_arguments_give_clear_errors():
    glob = SimilarityRule("global")
    with pytest.raises(ValueError, match="Unknown similarity 'cosine'"):
        ContrastiveLoss(SimilarityRule("cosine"))
    with pytest.raises(TypeError, match="takes a SimilarityRule .*got str 'token_wise'"):
        ContrastiveLoss("token_wise")
    with pytest.raises(ValueError, match="Unknown layout 'ring'"):
        ContrastiveLoss(glob, layout="ring")
    with pytest.raises(ValueError, match="block_size must be a positive"):
        ContrastiveLoss(glob, block_size=0)
    image = WukongImageFeatures(embeds=F.normalize(torch.randn(3, 8), dim=-1))
    text = WukongTextFeatures(embeds=F.normalize(torch.randn(3, 8), dim=-1))
    with pytest.raises(ValueError, match=r"token_wise similarity needs image_features with .token_embeds and .token_mask"):
        ContrastiveLoss(SimilarityRule("token_wise"))(image, text, torch.tensor(10.0))
    two = WukongTextFeatures(embeds=torch.randn(2, 8))
    with pytest.raises(ValueError, match="one text per image: got 3 images and 2 texts"):
        ContrastiveLoss(glob)(image, two, torch.tensor(10.0))
    with pytest.raises(RuntimeError, match="runs 2 processes but torch.distributed is not initialised"):
        ContrastiveLoss(glob)(image, text, torch.tensor(10.0), accelerator=SimpleNamespace(num_processes=2))
