"""Word-patch alignment (paper Figure 4): indices per patch, drawing at the image's size, clear errors."""

import numpy as np
import pytest
import torch
from conftest import make_tiny, random_images
from PIL import Image

from wukong_hf.cli import main
from wukong_hf.visualize import (
    WordPatchAlignment,
    alignment_grid,
    background_tokens,
    draw_alignment,
    highlight_mask,
    mask_share,
    token_role,
    word_patch_alignment,
    word_patch_alignments,
)


def test_alignment_indexes_cls_label_sep_per_patch(tiny_token_wise):
    model, processor = tiny_token_wise
    alignment = word_patch_alignment(model, processor, random_images(1)[0], "蜻蜓")
    assert alignment.tokens == ["[CLS]", "蜻", "蜓", "[SEP]"]
    assert alignment.label_tokens == [1, 2]
    assert alignment.token_index.shape == (4, 4)  # 32 px, patch 8
    assert alignment.similarity.shape == (4, 4, 4)
    assert torch.equal(alignment.token_index, alignment.similarity.argmax(-1))
    assert torch.equal(alignment.highlighted, (alignment.token_index == 1) | (alignment.token_index == 2))
    assert "1=蜻*" in alignment.legend() and "0=[CLS] " in alignment.legend()


def test_alignment_matches_the_models_token_embeddings(tiny_token_wise):
    model, processor = tiny_token_wise
    image = random_images(1, size=(32, 32))[0]
    alignment = word_patch_alignment(model, processor, image, "红色圆形")
    with torch.no_grad():
        out = model(**processor(text=["红色圆形"], images=[image]))
    patches = out.image_token_embeds[0, 1:]
    text = out.text_token_embeds[0, :6]
    assert torch.allclose(alignment.similarity.reshape(16, 6), patches @ text.t(), atol=1e-5)


def test_batched_alignments_equal_single_ones(tiny_token_wise):
    model, processor = tiny_token_wise
    images = random_images(2, seed=3)
    batch = word_patch_alignments(model, processor, images, ["猫", "一只狗"])
    single = word_patch_alignment(model, processor, images[1], "一只狗")
    assert torch.allclose(batch[1].similarity, single.similarity, atol=1e-5)
    assert batch[0].tokens == ["[CLS]", "猫", "[SEP]"]


def _fixed(index: list[list[int]], size=(8, 8)) -> WordPatchAlignment:
    token_index = torch.tensor(index)
    return WordPatchAlignment(["[CLS]", "红", "[SEP]"], [1], token_index, torch.zeros(*token_index.shape, 3),
                              (0, 0, size[0], size[1]), size)


def test_mask_share_counts_highlighted_pixels_on_the_object():
    alignment = _fixed([[1, 0], [2, 1]])  # top-left and bottom-right 4x4 cells highlighted
    highlight = highlight_mask(alignment)
    assert highlight.sum() == 32 and highlight[0, 0] and highlight[7, 7] and not highlight[0, 7]
    mask = np.zeros((8, 8), dtype=bool)
    mask[:4, :] = True  # object: the top half
    assert mask_share(alignment, mask) == (16, 32)
    assert mask_share(alignment, mask, tokens=[2]) == (0, 16)  # the [SEP] cell, bottom left
    with pytest.raises(ValueError, match="object_mask has shape"):
        mask_share(alignment, np.zeros((4, 4), dtype=bool))


def test_non_square_image_keeps_its_size_and_greys_the_uncropped_part():
    alignment = _fixed([[1, 0], [0, 0]], size=(12, 8))
    alignment.crop_box = (2, 0, 10, 8)
    image = Image.new("RGB", (12, 8), (255, 255, 255))
    drawn = draw_alignment(image, alignment)
    assert drawn.size == (12, 8)
    pixels = np.asarray(drawn).astype(int)
    assert pixels[4, 0].sum() < pixels[1, 3].sum()  # outside the crop is darker than a highlighted cell
    assert draw_alignment(image, alignment, scale=3).size == (36, 24)


def test_drawn_png_has_the_image_size(tiny_token_wise, tmp_path):
    model, processor = tiny_token_wise
    image = random_images(1, size=(48, 40))[0]
    alignment = word_patch_alignment(model, processor, image, "蜻蜓")
    mask = np.zeros((40, 48), dtype=bool)
    mask[10:20, 10:30] = True
    path = tmp_path / "a.png"
    draw_alignment(image, alignment, object_mask=mask).save(path)
    assert Image.open(path).size == (48, 40)
    grid = alignment_grid([draw_alignment(image, alignment, scale=2)] * 3, ["a", "b", "c"], columns=2)
    assert grid.size[0] > 2 * 96 and grid.size[1] > 2 * 80


def test_global_head_explains_it_needs_token_wise(tiny_global):
    model, processor = tiny_global
    with pytest.raises(ValueError, match="needs a token-wise model"):
        word_patch_alignment(model, processor, random_images(1)[0], "蜻蜓")


def test_token_reduction_and_bad_inputs_are_refused(tiny_token_wise):
    model, processor = make_tiny("tiny-reduced")
    with pytest.raises(ValueError, match="without token reduction"):
        word_patch_alignment(model, processor, random_images(1)[0], "蜻蜓")
    model, processor = tiny_token_wise
    with pytest.raises(ValueError, match="one label per image"):
        word_patch_alignments(model, processor, random_images(2), ["猫"])
    with pytest.raises(ValueError, match="at least one character"):
        word_patch_alignment(model, processor, random_images(1)[0], " ")


def _saved(tmp_path, fixture):
    model, processor = fixture
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_visualize_command_writes_png_of_the_image_size(tiny_token_wise, tmp_path, capsys):
    folder = _saved(tmp_path, tiny_token_wise)
    image_path = tmp_path / "dragonfly.png"
    random_images(1, size=(50, 36))[0].save(image_path)
    out = tmp_path / "out" / "fig4.png"
    assert main(["visualize", "--model", str(folder), "--image", str(image_path), "--label", "蜻蜓", "--out", str(out)]) == 0
    assert Image.open(out).size == (50, 36)
    printed = capsys.readouterr().out
    assert "1=蜻*" in printed and str(out) in printed
    # Default output name sits beside the image.
    assert main(["visualize", "--model", str(folder), "--image", str(image_path), "--label", "蜻蜓"]) == 0
    assert (tmp_path / "dragonfly-alignment.png").is_file()


def test_visualize_command_errors(tiny_global, tmp_path, capsys):
    folder = _saved(tmp_path, tiny_global)
    image_path = tmp_path / "a.png"
    random_images(1)[0].save(image_path)
    assert main(["visualize", "--model", str(folder), "--image", str(image_path), "--label", "蜻蜓"]) == 2
    assert "needs a token-wise model" in capsys.readouterr().err
    assert main(["visualize", "--model", str(folder), "--image", str(tmp_path / "missing.png"), "--label", "猫"]) == 2
    assert "missing.png does not exist" in capsys.readouterr().err
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert main(["visualize", "--model", str(folder), "--image", str(tmp_path / "broken.png"), "--label", "猫"]) == 2
    assert "Cannot read" in capsys.readouterr().err


def test_background_tokens_count_patches_without_object_pixels_by_role():
    # 2x2 patches over an 8x8 image; the object covers the top-left cell and one pixel of the top-right.
    alignment = WordPatchAlignment(["[CLS]", "红", "色", "[SEP]"], [1, 2], torch.tensor([[1, 2], [3, 2]]),
                                   torch.zeros(2, 2, 4), (0, 0, 8, 8), (8, 8))
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True
    mask[0, 4] = True
    # Background patches: bottom-left ([SEP]) and bottom-right (label piece 2); the top-right one touches the object.
    assert background_tokens(alignment, mask) == {"[SEP]": 1, "label 2": 1}
    assert [token_role(alignment, i) for i in range(4)] == ["[CLS]", "label 1", "label 2", "[SEP]"]
    with pytest.raises(ValueError, match="object_mask has shape"):
        background_tokens(alignment, np.zeros((4, 4), bool))
