"""The faster encoding paths score exactly as before: texts batched by length and padded only to
their batch's longest, token features laid out at the set's longest text, images read ahead in a
thread. References are computed the plain way (every text padded to the tower's 32 tokens, one
model call per batch), with the model's own score()."""

import pytest
import torch
from conftest import make_tiny, random_images

from wukong_hf.evaluation.encoding import encode_images, encode_texts, pad_text_tokens

TEXTS = [
    "一张猫的照片。",
    "狗",
    "这是一张很长很长的图片的描述，里面有很多很多的字，超过了三十二个字的长度限制，对吧对吧对吧",
    "",
    "红三角在雪地上",
    "a photo of 一只 dog [MASK]",
    "蓝色的天空和白色的云",
]


def reference(model, processor, images, texts):
    """Logits the plain way: one call per modality, texts padded to the tower's full length."""
    inputs = processor(images=images, text=texts)
    with torch.no_grad():
        image = model.encode_image(inputs["pixel_values"])
        text = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
        return model.score(image, text), image, text


def relative(a, b):
    return float((a - b).abs().max() / a.abs().max())


@pytest.mark.parametrize("preset,overrides,sort_by_length", [
    ("tiny-token-wise", {}, True),
    ("tiny-token-wise", {}, False),
    ("tiny-global", {}, True),
    ("tiny-reduced", {}, True),  # CLIP text tower pooled at [SEP], "zero" padding rule, token reduction
    ("tiny-token-wise", {"token_wise_padding": "zero", "token_wise_text_cls": True}, True),
])
def test_encoded_features_score_as_the_plain_path(preset, overrides, sort_by_length):
    model, processor = make_tiny(preset, **overrides)
    images = random_images(5)
    texts = TEXTS * 3
    (ref_i2t, ref_t2i), _, ref_text = reference(model, processor, images, texts)
    image_features, kept, skipped = encode_images(model, processor, [lambda im=im: im for im in images], batch_size=2,
                                                  progress=False)
    text_features = encode_texts(model, processor, texts, batch_size=4, progress=False, sort_by_length=sort_by_length)
    with torch.no_grad():
        i2t, t2i = model.score(image_features, text_features)
    assert kept == list(range(5)) and skipped == []
    assert relative(ref_i2t, i2t) < 1e-5 and relative(ref_t2i, t2i) < 1e-5
    assert torch.allclose(text_features.embeds, ref_text.embeds, atol=1e-6)  # input order kept
    if text_features.has_padding is not None:
        assert torch.equal(text_features.has_padding, ref_text.has_padding)


def test_token_features_are_laid_out_at_the_longest_text_of_the_set():
    model, processor = make_tiny("tiny-token-wise")
    texts = ["猫", "一张狗的照片", "红三角"]
    features = encode_texts(model, processor, texts, batch_size=2, progress=False)
    # "[CLS] 一 张 狗 的 照 片 [SEP]" is the longest: 8 positions, not the tower's 32 ([CLS] does not count here).
    assert features.token_embeds.shape[1] == 8 and features.token_mask.sum(1).tolist() == [2, 7, 4]
    assert not features.token_embeds[0, 3:].any()  # positions past a text are zero and masked out
    assert features.has_padding.all()  # all three are shorter than the tower's 32 tokens


def test_padding_never_changes_a_score():
    model, processor = make_tiny("tiny-token-wise", token_wise_padding="zero")
    images = random_images(3)
    (ref_i2t, ref_t2i), image, text = reference(model, processor, images, TEXTS)
    for length in (32, 40):
        padded = pad_text_tokens(text, length)
        with torch.no_grad():
            i2t, t2i = model.score(image, padded)
        assert torch.equal(i2t, ref_i2t) and torch.equal(t2i, ref_t2i)
    with pytest.raises(ValueError, match="down to"):
        pad_text_tokens(text, 5)


def test_images_are_read_ahead_in_order_once_each_and_bad_ones_are_skipped():
    model, processor = make_tiny("tiny-token-wise")
    images = random_images(7)
    calls = []

    def loader(i):
        def load():
            calls.append(i)
            if i == 4:
                raise OSError("truncated file")
            return images[i]
        return load

    features, kept, skipped = encode_images(model, processor, [loader(i) for i in range(7)], batch_size=3, progress=False)
    assert calls == list(range(7)) and kept == [0, 1, 2, 3, 5, 6]
    assert skipped == [(4, "OSError: truncated file")]
    with torch.no_grad():
        plain = model.encode_image(processor(images=[images[i] for i in kept])["pixel_values"])
    assert torch.allclose(features.embeds, plain.embeds, atol=1e-6)
    assert torch.allclose(features.token_embeds, plain.token_embeds, atol=1e-6)


def test_global_models_keep_no_token_features_unless_asked():
    model, processor = make_tiny("tiny-global")
    assert encode_texts(model, processor, TEXTS, progress=False).token_embeds is None
    kept = encode_texts(model, processor, TEXTS, progress=False, keep_tokens=True)
    assert kept.token_embeds is not None and kept.token_mask.shape == kept.token_embeds.shape[:2]


def test_no_texts_is_a_clear_error():
    model, processor = make_tiny("tiny-global")
    with pytest.raises(ValueError, match="No texts to encode"):
        encode_texts(model, processor, [], progress=False)
