"""WukongProcessor: Chinese WordPiece tokenisation and the released image preprocessing."""

import numpy as np
import pytest
import torch
from PIL import Image

from wukong_hf import WukongProcessor
from wukong_hf.processing_wukong import CLIP_MEAN, CLIP_STD, load_chinese_vocab


@pytest.fixture(scope="module")
def processor():
    return WukongProcessor.from_defaults()


def test_bundled_vocab_is_bert_chinese():
    vocab = load_chinese_vocab()
    assert len(vocab) == 21128
    assert (vocab["[PAD]"], vocab["[UNK]"], vocab["[CLS]"], vocab["[SEP]"], vocab["[MASK]"]) == (0, 100, 101, 102, 103)


def test_chinese_sentence_is_character_tokenised_not_unk(processor):
    text = "蓝色背景上的一个红色圆形"
    enc = processor(text=text)
    ids = enc["input_ids"][0]
    n = len(text)
    assert ids.shape == (32,)
    assert ids[0] == 101 and ids[n + 1] == 102 and bool((ids[n + 2 :] == 0).all())
    body = ids[1 : n + 1].tolist()
    assert 100 not in body
    assert processor.tokenizer.convert_ids_to_tokens(body) == list(text)
    assert enc["attention_mask"][0].sum() == n + 2


def test_mixed_text_lowercases_and_splits_wordpieces(processor):
    ids = processor(text="Hello 世界 2022")["input_ids"][0].tolist()
    tokens = processor.tokenizer.convert_ids_to_tokens(ids[: ids.index(102) + 1])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "世" in tokens and "界" in tokens
    assert "[UNK]" not in tokens


def test_overlong_text_keeps_its_first_30_pieces_then_sep(processor):
    text = "一二三四五六七八九十" * 5
    ids = processor(text=text)["input_ids"][0]
    assert ids.shape == (32,)
    assert ids[-1] == 102 and ids[0] == 101
    assert processor.tokenizer.convert_ids_to_tokens(ids[1:31].tolist()) == list(text[:30])


def test_empty_caption_is_cls_sep_and_bad_text_is_rejected_with_its_index(processor):
    # As the released tokenizer: the empty (or blank) caption is [CLS] [SEP], never an error.
    ids = processor(text=["一只猫", "   ", ""])["input_ids"]
    assert ids[1, :3].tolist() == [101, 102, 0] and ids[2, :3].tolist() == [101, 102, 0]
    with pytest.raises(TypeError, match=r"text\[0\] is int"):
        processor(text=[3])
    with pytest.raises(ValueError, match="needs text, images or both"):
        processor()


def _reference_pixels(image: Image.Image, size: int = 224) -> np.ndarray:
    """The released preprocessing with PIL: short side to `size` (bicubic), centre crop, CLIP mean/std."""
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    return ((arr - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).transpose(2, 0, 1)


def test_images_are_resized_cropped_and_normalised_like_the_release(processor):
    # A smooth image: resampling kernels differ only by rounding on smooth content.
    y, x = np.mgrid[0:300, 0:400]
    arr = np.stack([x / 400 * 255, y / 300 * 255, (x + y) / 700 * 255], axis=-1).astype("uint8")
    image = Image.fromarray(arr)
    pixels = processor(images=image)["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224)
    expected = torch.from_numpy(_reference_pixels(image)).float()
    assert (pixels[0] - expected).abs().mean() < 0.01


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "1"])
def test_every_pil_mode_becomes_three_channels(processor, mode):
    arr = (np.random.default_rng(1).random((60, 80, 3)) * 255).astype("uint8")
    image = Image.fromarray(arr).convert(mode)
    pixels = processor(images=image)["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224)
    assert torch.isfinite(pixels).all()


def test_processor_round_trips_through_save_pretrained(tmp_path, processor):
    processor.save_pretrained(tmp_path)
    again = WukongProcessor.from_pretrained(tmp_path)
    text = "一只在草地上奔跑的狗"
    assert torch.equal(again(text=text)["input_ids"], processor(text=text)["input_ids"])
    assert again.image_processor.crop_size == processor.image_processor.crop_size


def test_images_then_text_by_position_like_clip_processor(processor):
    from conftest import random_images

    images = random_images(2)
    by_position = processor(images, ["一只猫", "一条狗"])
    by_name = processor(text=["一只猫", "一条狗"], images=images)
    legacy = processor(["一只猫", "一条狗"], images)  # the old (text, images) order still works
    for result in (by_position, legacy):
        assert torch.equal(result["input_ids"], by_name["input_ids"])
        assert torch.equal(result["pixel_values"], by_name["pixel_values"])
    assert processor(images)["pixel_values"].shape[0] == 2 and "input_ids" not in processor(images)
