"""The built-in synthetic set: deterministic, captions match pixels, held-out combinations stay held out."""

import numpy as np
import pytest

from wukong_hf.data.synthetic import BACKGROUND_COLOURS, CAPTION_TEMPLATES, OBJECT_COLOURS, SHAPES, SyntheticShapes


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    return min(palette, key=lambda name: float(np.sum((np.array(palette[name]) - rgb) ** 2)))


def test_deterministic_under_seed_and_independent_of_count():
    a = SyntheticShapes(image_size=32, seed=3).examples("train", 5)
    b = SyntheticShapes(image_size=32, seed=3).examples("train", 8)[:5]
    for x, y in zip(a, b):
        assert x.caption == y.caption
        assert np.array_equal(np.asarray(x.image), np.asarray(y.image))
        assert np.array_equal(x.mask, y.mask)
    c = SyntheticShapes(image_size=32, seed=4).examples("train", 5)
    assert any(not np.array_equal(np.asarray(x.image), np.asarray(z.image)) for x, z in zip(a, c))


@pytest.mark.parametrize("split", ["train", "held_out"])
def test_captions_match_pixels(split):
    gen = SyntheticShapes(image_size=48, seed=1)
    for ex in gen.examples(split, 40):
        pixels = np.asarray(ex.image).astype(float)
        assert ex.mask.shape == (48, 48) and ex.mask.any() and not ex.mask.all()
        assert _nearest(pixels[ex.mask].mean(axis=0), OBJECT_COLOURS) == ex.colour
        assert _nearest(pixels[~ex.mask].mean(axis=0), BACKGROUND_COLOURS) == ex.background
        assert ex.colour != ex.background
        assert ex.colour in ex.caption and ex.shape in ex.caption
        # The background is named exactly when the phrasing has a place for it, and then correctly.
        assert any(name in ex.caption for name in BACKGROUND_COLOURS) == (ex.background in ex.caption)
        assert (ex.background in ex.caption) == ex.names_background
        assert ex.label == ex.colour + ex.shape


def test_phrasings_vary_and_some_omit_the_background():
    examples = SyntheticShapes(image_size=32, seed=0).examples("train", 200)
    used = {t for ex in examples for t in CAPTION_TEMPLATES
            if t.format(colour=ex.colour, shape=ex.shape, background=ex.background) == ex.caption}
    assert used == set(CAPTION_TEMPLATES)
    assert any(not any(name in ex.caption for name in BACKGROUND_COLOURS) for ex in examples)


def test_no_character_is_shared_by_every_label_or_every_caption():
    # A character in every label (色 and 形 in "红色圆形") gives background patches a label token that
    # costs the contrastive loss nothing to match; the alignment share then depends on the seed.
    gen = SyntheticShapes(image_size=32, seed=0)
    assert not set.intersection(*(set(label) for label in gen.labels))
    captions = [ex.caption for ex in gen.examples("train", 200)]
    assert not set.intersection(*(set(c) for c in captions))
    # Background names share no character with object names either.
    assert not set("".join(BACKGROUND_COLOURS)) & set("".join(OBJECT_COLOURS) + "".join(SHAPES))


def test_held_out_combinations_never_in_train():
    gen = SyntheticShapes(image_size=32, seed=0)
    held = set(gen.held_out_combinations)
    assert len(held) == len(SHAPES)
    train = {(ex.colour, ex.shape) for ex in gen.examples("train", 300)}
    assert not train & held
    assert train == set(gen.train_combinations)  # every training combination occurs
    # Every colour and every shape still appears in training.
    assert {c for c, _ in train} == set(OBJECT_COLOURS) and {s for _, s in train} == set(SHAPES)
    assert {(ex.colour, ex.shape) for ex in gen.examples("held_out", 60)} == held


def test_shapes_differ_in_area():
    # A square fills its box, a cross 5/9 of it, a triangle about half: the masks follow the shape.
    gen = SyntheticShapes(image_size=48, seed=2)
    fill = {}
    for ex in gen.examples("train", 120):
        ys, xs = np.nonzero(ex.mask)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        fill.setdefault(ex.shape, []).append(ex.mask.sum() / box)
    means = {shape: float(np.mean(v)) for shape, v in fill.items()}
    assert means["方块"] > 0.97
    assert 0.74 < means["圆"] < 0.84
    assert 0.45 < means["三角"] < 0.6
    assert 0.5 < means["十字"] < 0.65


def test_to_dataset_columns():
    gen = SyntheticShapes(image_size=32, seed=0)
    ds = gen.to_dataset("held_out", 6)
    assert len(ds) == 6
    assert {"image", "caption", "label", "mask"} <= set(ds.column_names)
    row = ds[0]
    ex = gen.example("held_out", 0)
    assert row["caption"] == ex.caption
    assert row["names_background"] == ex.names_background
    assert ds.features["label"].names[row["label"]] == ex.label
    assert row["image"].size == (32, 32)
    assert np.array_equal(np.asarray(row["mask"]) > 0, ex.mask)
    assert np.array_equal(np.asarray(row["image"]), np.asarray(ex.image))


def test_dataset_round_trips_through_datasets_on_disk(tmp_path):
    import datasets

    SyntheticShapes(image_size=32, seed=0).to_dataset("train", 4).save_to_disk(str(tmp_path / "shapes"))
    loaded = datasets.load_from_disk(str(tmp_path / "shapes"))
    assert len(loaded) == 4 and loaded[0]["image"].size == (32, 32)


def test_bad_arguments_explain_themselves():
    with pytest.raises(ValueError, match="too small"):
        SyntheticShapes(image_size=8)
    with pytest.raises(ValueError, match="num_held_out"):
        SyntheticShapes(num_held_out=9)
    with pytest.raises(ValueError, match="splits train, held_out"):
        SyntheticShapes().examples("test", 3)
    with pytest.raises(ValueError, match="at least 1"):
        SyntheticShapes().examples("train", 0)
