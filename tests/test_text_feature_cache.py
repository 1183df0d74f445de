"""The zero-shot prompt feature cache: a second evaluation of the same classes runs the text tower
zero times and gives the same numbers; any change of weights, tokenizer, classes or templates
misses; damaged or half-written files are never read as features."""

import json
import os

import pytest
import torch
from conftest import make_tiny, random_images

from wukong_hf.cli import main
from wukong_hf.evaluation import LabelledImages, zero_shot_classification
from wukong_hf.evaluation.text_feature_cache import CACHE_ENV, TextFeatureCache, as_text_cache, default_text_cache_dir

CLASSES = ["猫", "狗", "红三角", "蓝方块"]
TEMPLATES = ["{c}", "一张{c}的照片", "图片里有一个{c}"]


def labelled(n, seed):
    images = random_images(n, seed=seed)
    return LabelledImages([lambda im=im: im for im in images], [i % len(CLASSES) for i in range(n)], [str(i) for i in range(n)])


def counting(model):
    """Count the text tower's forward calls (what the cache must save)."""
    calls = {"texts": 0}
    forward = model.text_model.forward

    def counted(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        calls["texts"] += len(ids)
        return forward(*args, **kwargs)

    model.text_model.forward = counted
    return calls


@pytest.mark.parametrize("preset", ["tiny-token-wise", "tiny-global"])
def test_second_evaluation_of_the_same_classes_encodes_no_text(tmp_path, preset):
    model, processor = make_tiny(preset)
    calls = counting(model)
    cache = TextFeatureCache(tmp_path / "cache")
    first = zero_shot_classification(model, processor, labelled(6, 0), CLASSES, TEMPLATES, text_cache=cache)
    assert calls["texts"] == len(CLASSES) * (1 + len(TEMPLATES)) and (cache.hits, cache.misses) == (0, 2)
    # new images, same classes and templates: no text tower call at all
    second = zero_shot_classification(model, processor, labelled(6, 0), CLASSES, TEMPLATES, text_cache=cache)
    assert calls["texts"] == len(CLASSES) * (1 + len(TEMPLATES)) and (cache.hits, cache.misses) == (2, 2)
    assert second["ensemble"] == first["ensemble"] and second["single_prompt"] == first["single_prompt"]
    assert second["text_cache"] == {"folder": str(tmp_path / "cache"), "hits": 2, "misses": 2}
    uncached = zero_shot_classification(model, processor, labelled(6, 0), CLASSES, TEMPLATES)
    assert uncached["ensemble"] == first["ensemble"] and uncached["text_cache"] is None


def test_cached_features_are_the_encoded_ones(tmp_path):
    model, processor = make_tiny("tiny-token-wise", token_wise_padding="zero")
    cache = TextFeatureCache(tmp_path)
    texts = ["一张猫的照片", "狗", "图片里有一个红三角"]
    encoded = cache.encode(model, processor, texts)
    read = cache.encode(model, processor, texts)
    assert cache.hits == 1
    for name in ("embeds", "token_embeds", "token_mask", "has_padding"):
        assert torch.equal(getattr(encoded, name), getattr(read, name))


def test_any_change_of_model_tokenizer_classes_or_templates_misses(tmp_path):
    model, processor = make_tiny("tiny-token-wise")
    cache = TextFeatureCache(tmp_path)
    texts = [t.format(c=c) for c in CLASSES for t in TEMPLATES]
    cache.encode(model, processor, texts)
    cache.encode(model, processor, texts[::-1])  # another class/template order is another list
    cache.encode(model, processor, texts[:-1])  # one prompt fewer
    with torch.no_grad():
        model.text_model.encoder.layer[0].output.dense.bias[0] += 1e-3  # one weight of the text tower
    cache.encode(model, processor, texts)
    other_tokenizer = make_tiny("tiny-token-wise", seed=0)[1]
    other_tokenizer.tokenizer.model_max_length = 16
    cache.encode(model, other_tokenizer, texts)
    assert (cache.hits, cache.misses) == (0, 5)
    with torch.no_grad():
        model.visual_projection.weight[0, 0] += 1.0  # the image side does not change text features
    cache.encode(model, processor, texts)
    assert cache.hits == 1


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "other key"])
def test_a_damaged_cache_file_is_reported_deleted_and_encoded_again(tmp_path, caplog, damage):
    model, processor = make_tiny("tiny-token-wise")
    cache = TextFeatureCache(tmp_path)
    texts = ["一张猫的照片", "狗"]
    good = cache.encode(model, processor, texts)
    (path,) = tmp_path.glob("*.safetensors")
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid file of another list copied over this key
        other = cache.path(cache.key("x", "y", True, ["另一个"]))
        cache.save(cache.key("x", "y", True, ["另一个"]), good)
        os.replace(other, path)
    calls = counting(model)
    again = cache.encode(model, processor, texts)
    assert calls["texts"] == 2 and cache.misses == 2 and "unreadable" in caplog.text
    assert torch.equal(again.embeds, good.embeds)
    assert cache.encode(model, processor, texts) is not None and cache.hits == 1  # rewritten and readable


def test_a_killed_write_leaves_no_file_under_the_key(tmp_path, monkeypatch):
    import wukong_hf.evaluation.text_feature_cache as module

    model, processor = make_tiny("tiny-token-wise")
    cache = TextFeatureCache(tmp_path)

    def dies_half_way(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)  # half a file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "save_file", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        cache.encode(model, processor, ["猫"])
    assert list(tmp_path.iterdir()) == []  # neither a file under the key nor the temporary one
    monkeypatch.undo()
    cache.encode(model, processor, ["猫"])
    assert cache.misses == 2 and len(list(tmp_path.glob("*.safetensors"))) == 1


def test_cache_location_default_env_and_off(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_text_cache_dir() == tmp_path / "xdg" / "wukong_hf" / "text_features"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert default_text_cache_dir() == tmp_path / "mine" and as_text_cache(True).folder == tmp_path / "mine"
    monkeypatch.setenv(CACHE_ENV, "off")
    assert default_text_cache_dir() is None and as_text_cache(True) is None
    assert as_text_cache(None) is None and as_text_cache(tmp_path).folder == tmp_path


def test_cli_rerun_reads_the_cache_and_no_text_cache_writes_nothing(tmp_path):
    model, processor = make_tiny("tiny-global")
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    for k, image in enumerate(random_images(4, size=(40, 40))):
        (tmp_path / "images" / CLASSES[k]).mkdir(parents=True)
        image.save(tmp_path / "images" / CLASSES[k] / "0.png")
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    (tmp_path / "templates.txt").write_text("\n".join(TEMPLATES) + "\n", encoding="utf-8")
    args = ["eval", "zero-shot", "--model", str(tmp_path / "model"), "--image-folder", str(tmp_path / "images"),
            "--classnames", str(tmp_path / "classes.txt"), "--templates", str(tmp_path / "templates.txt")]
    results = []
    for run, extra in enumerate((["--text-cache", str(tmp_path / "cache")], ["--text-cache", str(tmp_path / "cache")],
                                 ["--no-text-cache"])):
        assert main(args + ["--output", str(tmp_path / f"out{run}")] + extra) == 0
        results.append(json.loads((tmp_path / f"out{run}" / "results.json").read_text(encoding="utf-8")))
    assert results[0]["text_cache"]["misses"] == 2 and results[1]["text_cache"] == {
        "folder": str(tmp_path / "cache"), "hits": 2, "misses": 0}
    assert results[2]["text_cache"] is None and results[1]["ensemble"] == results[0]["ensemble"] == results[2]["ensemble"]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
