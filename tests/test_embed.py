"""`wukong embed` and embedding files: the features are the model's, a killed run continues where it
stopped, retrieval reads the files instead of encoding and gets the same metrics."""

import json

import pytest
import torch
from conftest import make_tiny, random_images
from test_eval_readers import write_chinese_clip

from wukong_hf.cli import main
from wukong_hf.evaluation.embeddings import embed_images, embed_texts, load_embeddings

CAPTIONS = ["一张猫的照片", "狗", "这是一张很长的图片描述，有很多字", "红三角在雪地上", "蓝方块"]


def counted_images(model):
    calls = {"images": 0}
    encode = model.encode_image

    def counting(pixel_values):
        calls["images"] += len(pixel_values)
        return encode(pixel_values)

    model.encode_image = counting
    return calls


def loaders(images, broken=(), stop_at=None):
    def make(i):
        def load():
            if i == stop_at:
                raise KeyboardInterrupt  # the user pressed Ctrl-C (or the job was stopped) here
            if i in broken:
                raise OSError("broken file")
            return images[i]
        return load
    return [make(i) for i in range(len(images))]


def test_image_file_holds_the_model_features_ids_and_skipped_images(tmp_path):
    model, processor = make_tiny("tiny-token-wise")
    images = random_images(7)
    ids = [f"img{i}.png" for i in range(7)]
    path = embed_images(model, processor, loaders(images, broken={3}), ids, tmp_path / "e.safetensors",
                        batch_size=2, shard_size=3, progress=False)
    loaded = load_embeddings(path)
    assert loaded.modality == "image" and loaded.ids == [i for i in ids if i != "img3.png"]
    assert loaded.skipped == [{"id": "img3.png", "reason": "OSError: broken file"}]
    with torch.no_grad():
        plain = model.encode_image(processor(images=[images[i] for i in range(7) if i != 3])["pixel_values"])
    assert torch.allclose(loaded.features.embeds, plain.embeds, atol=1e-6)
    assert torch.allclose(loaded.features.token_embeds, plain.token_embeds, atol=1e-6)
    assert loaded.features.grid == plain.grid and loaded.features.num_prefix_tokens == plain.num_prefix_tokens
    assert loaded.similarity_rule == model.similarity_rule
    assert not (tmp_path / "e.safetensors.partial").exists()


def test_a_killed_run_continues_from_the_last_finished_shard(tmp_path):
    model, processor = make_tiny("tiny-token-wise")
    images = random_images(10)
    ids = [str(i) for i in range(10)]
    out = tmp_path / "e.safetensors"
    calls = counted_images(model)
    with pytest.raises(KeyboardInterrupt):
        embed_images(model, processor, loaders(images, stop_at=7), ids, out, batch_size=2, shard_size=3, progress=False)
    partial = tmp_path / "e.safetensors.partial"
    assert sorted(p.name for p in partial.glob("shard-*")) == ["shard-000000.safetensors", "shard-000001.safetensors"]
    assert not out.exists()
    calls["images"] = 0
    embed_images(model, processor, loaders(images), ids, out, batch_size=2, shard_size=3, progress=False)
    assert calls["images"] == 4  # only images 6..9 (shards 2 and 3) were encoded again
    resumed = load_embeddings(out)
    one_go = load_embeddings(embed_images(model, processor, loaders(images), ids, tmp_path / "one.safetensors",
                                          batch_size=2, shard_size=3, progress=False))
    assert resumed.ids == one_go.ids == ids
    assert torch.equal(resumed.features.embeds, one_go.features.embeds)
    assert torch.equal(resumed.features.token_embeds, one_go.features.token_embeds)


def test_a_damaged_shard_is_encoded_again(tmp_path, caplog):
    model, processor = make_tiny("tiny-global")
    images = random_images(6)
    ids = [str(i) for i in range(6)]
    out = tmp_path / "e.safetensors"
    with pytest.raises(KeyboardInterrupt):
        embed_images(model, processor, loaders(images, stop_at=5), ids, out, shard_size=2, progress=False)
    shard = tmp_path / "e.safetensors.partial" / "shard-000001.safetensors"
    shard.write_bytes(shard.read_bytes()[:40])  # killed while the disk was writing it
    calls = counted_images(model)
    embed_images(model, processor, loaders(images), ids, out, shard_size=2, progress=False)
    assert calls["images"] == 4 and "unreadable" in caplog.text
    assert load_embeddings(out).ids == ids


def test_another_model_or_input_does_not_continue_an_unfinished_run(tmp_path):
    model, processor = make_tiny("tiny-global")
    images = random_images(4)
    out = tmp_path / "e.safetensors"
    with pytest.raises(KeyboardInterrupt):
        embed_images(model, processor, loaders(images, stop_at=3), list("abcd"), out, shard_size=2, progress=False)
    other, _ = make_tiny("tiny-global", seed=1)
    with pytest.raises(ValueError, match="unfinished run with other inputs, another model"):
        embed_images(other, processor, loaders(images), list("abcd"), out, shard_size=2, progress=False)
    with pytest.raises(ValueError, match="unfinished run"):
        embed_images(model, processor, loaders(images), list("abce"), out, shard_size=2, progress=False)
    embed_images(other, processor, loaders(images), list("abcd"), out, shard_size=2, progress=False, overwrite=True)
    with pytest.raises(ValueError, match="exists already; pass --overwrite"):
        embed_images(other, processor, loaders(images), list("abcd"), out, shard_size=2, progress=False)


def test_text_file_matches_encoded_texts_and_keeps_has_padding(tmp_path):
    model, processor = make_tiny("tiny-reduced")  # CLIP text tower, "zero" padding rule
    texts = CAPTIONS * 3
    path = embed_texts(model, processor, texts, [str(i) for i in range(15)], tmp_path / "t.safetensors", shard_size=4,
                       progress=False)
    loaded = load_embeddings(path)
    with torch.no_grad():
        inputs = processor(text=texts)
        plain = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
        image = model.encode_image(processor(images=random_images(3))["pixel_values"])
        assert torch.allclose(model.score(image, loaded.features)[0], model.score(image, plain)[0], atol=1e-5)
    assert torch.equal(loaded.features.has_padding, plain.has_padding)
    assert loaded.features.token_embeds.shape[1] == int(inputs["attention_mask"].sum(1).max())


def write_model(tmp_path, preset="tiny-token-wise", seed=0):
    model, processor = make_tiny(preset, seed=seed)
    folder = tmp_path / f"model-{preset}-{seed}"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def test_cli_embed_then_retrieval_from_files_equals_encoding(tmp_path, capsys):
    data = write_chinese_clip(tmp_path / "set")
    model = write_model(tmp_path)
    common = ["--format", "chinese-clip", "--data", str(data), "--split", "valid", "--model", model]
    assert main(["embed", "images", *common, "--out", str(tmp_path / "i.safetensors"), "--shard-size", "2"]) == 0
    assert main(["embed", "texts", *common, "--out", str(tmp_path / "t.safetensors")]) == 0
    assert "wrote 3 image embeddings (global and token features" in capsys.readouterr().out
    evaluate = ["eval", "retrieval", "--format", "chinese-clip", "--data", str(data), "--split", "valid"]
    assert main([*evaluate, "--model", model, "--out", str(tmp_path / "encoded")]) == 0
    assert main([*evaluate, "--image-features", str(tmp_path / "i.safetensors"), "--text-features",
                 str(tmp_path / "t.safetensors"), "--out", str(tmp_path / "from-files")]) == 0
    assert main([*evaluate, "--model", model, "--image-features", str(tmp_path / "i.safetensors"),
                 "--out", str(tmp_path / "half")]) == 0
    results = [json.loads((tmp_path / name / "results.json").read_text(encoding="utf-8"))
               for name in ("encoded", "from-files", "half")]
    assert results[0]["metrics"] == results[1]["metrics"] == results[2]["metrics"]
    assert results[1]["model"] == model and results[1]["similarity"] == "token_wise"


def test_cli_retrieval_rejects_features_of_another_model(tmp_path, capsys):
    data = write_chinese_clip(tmp_path / "set")
    model, other = write_model(tmp_path), write_model(tmp_path, seed=1)
    common = ["--format", "chinese-clip", "--data", str(data), "--split", "valid"]
    assert main(["embed", "images", *common, "--model", model, "--out", str(tmp_path / "i.safetensors")]) == 0
    assert main(["embed", "texts", *common, "--model", other, "--out", str(tmp_path / "t.safetensors")]) == 0
    capsys.readouterr()
    evaluate = ["eval", "retrieval", *common, "--out", str(tmp_path / "out")]
    assert main([*evaluate, "--model", other, "--image-features", str(tmp_path / "i.safetensors")]) == 2
    assert "made by another image tower than this model's" in capsys.readouterr().err
    assert main([*evaluate, "--image-features", str(tmp_path / "i.safetensors"), "--text-features",
                 str(tmp_path / "t.safetensors")]) == 2
    assert "made by different models" in capsys.readouterr().err
    assert main([*evaluate, "--image-features", str(tmp_path / "t.safetensors"), "--text-features",
                 str(tmp_path / "t.safetensors")]) == 2
    assert "holds text features; pass it as --text-features" in capsys.readouterr().err


def test_cli_embed_folder_and_captions_file(tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, image in enumerate(random_images(3)):
        image.save(folder / ("sub" if i == 2 else "") / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "captions.txt").write_text("一张猫的照片\n\n狗\n", encoding="utf-8")
    model = write_model(tmp_path, "tiny-global")
    assert main(["embed", "images", "--folder", str(folder), "--model", model, "--out", str(tmp_path / "i.safetensors"),
                 "--tokens"]) == 0
    images = load_embeddings(tmp_path / "i.safetensors")
    assert images.ids == ["0.png", "1.png", "sub/2.png"] and images.skipped[0]["id"] == "broken.jpg"
    assert images.features.token_embeds is not None  # --tokens keeps them for a global model too
    assert main(["embed", "texts", "--captions", str(tmp_path / "captions.txt"), "--model", model,
                 "--out", str(tmp_path / "t.safetensors")]) == 0
    texts = load_embeddings(tmp_path / "t.safetensors")
    assert texts.ids == ["1", "3"] and texts.features.token_embeds is None  # blank line 2 is no caption


def test_cli_embed_folder_leaves_out_hidden_files_and_folders(tmp_path):
    # Regression: `wukong embed --folder` walked the folder itself and embedded notebook checkpoints and
    # macOS ._ files; it now uses the walk the Space index and export use (image_sources.image_files).
    folder = tmp_path / "photos"
    (folder / "b").mkdir(parents=True)
    (folder / ".ipynb_checkpoints").mkdir()
    images = random_images(4)
    for image, name in zip(images, ["a.png", "b/c.png", "B.png"]):
        image.save(folder / name)
    images[3].save(folder / ".ipynb_checkpoints" / "a-checkpoint.png")
    images[3].save(folder / "b" / ".hidden.png")
    (folder / "._a.png").write_bytes(b"AppleDouble resource fork, not an image")
    model = write_model(tmp_path, "tiny-global")
    assert main(["embed", "images", "--folder", str(folder), "--model", model,
                 "--out", str(tmp_path / "i.safetensors")]) == 0
    embedded = load_embeddings(tmp_path / "i.safetensors")
    assert embedded.ids == ["B.png", "a.png", "b/c.png"]  # sorted paths, as before; no hidden one
    assert embedded.skipped == []


def test_cli_embed_dataset_captions(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"caption": ["猫", "狗"], "key": ["a", "b"]}).save_to_disk(str(tmp_path / "ds"))
    model = write_model(tmp_path, "tiny-global")
    assert main(["embed", "texts", "--dataset", str(tmp_path / "ds"), "--id-column", "key", "--model", model,
                 "--out", str(tmp_path / "t.safetensors")]) == 0
    assert load_embeddings(tmp_path / "t.safetensors").ids == ["a", "b"]


@pytest.mark.parametrize("args,message", [
    (["images", "--folder", "{tmp}/missing"], "Image folder {tmp}/missing does not exist"),
    (["texts", "--captions", "{tmp}/missing.txt"], "Captions file {tmp}/missing.txt does not exist"),
    (["texts", "--captions", "{tmp}/blank.txt"], "holds no captions"),
    (["images", "--data", "{tmp}"], "--data needs --format"),
    (["texts", "--dataset", "{tmp}/ds", "--text-column", "text"], "has no column 'text'"),
])
def test_cli_embed_bad_input_says_what_to_do(tmp_path, capsys, args, message):
    import datasets

    (tmp_path / "blank.txt").write_text("\n  \n", encoding="utf-8")
    datasets.Dataset.from_dict({"caption": ["猫"]}).save_to_disk(str(tmp_path / "ds"))
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["embed", *args, "--preset", "tiny-global", "--out", str(tmp_path / "o.safetensors")]) == 2
    assert message.replace("{tmp}", str(tmp_path)) in capsys.readouterr().err


@pytest.mark.parametrize("grid", [(2, 3), None])
def test_features_round_trip_through_a_safetensors_file(tmp_path, grid):
    # The one conversion that embedding files, the text feature cache and the demo's index all use.
    from safetensors import safe_open
    from safetensors.torch import save_file

    from wukong_hf.features import WukongImageFeatures, WukongTextFeatures

    n1 = 7 if grid else 4
    strided = torch.randn(n1, 3, 8).transpose(0, 1)  # not contiguous: safetensors needs to_tensors to fix that
    images = WukongImageFeatures(torch.randn(3, 8), strided,
                                 torch.rand(3, n1) > 0.3, grid=grid, num_prefix_tokens=1)
    texts = WukongTextFeatures(torch.randn(2, 8), None, None, has_padding=torch.tensor([True, False]))
    for features in (images, texts, images.without_tokens()):
        tensors, metadata = features.to_tensors()
        assert set(tensors) == {k for k, v in features._rows().items() if v is not None}
        save_file(tensors, str(tmp_path / "f.safetensors"), metadata={"other": "kept apart", **metadata})
        with safe_open(str(tmp_path / "f.safetensors"), framework="pt") as f:
            back = type(features).from_tensors({k: f.get_tensor(k) for k in f.keys()}, f.metadata())
        assert type(back) is type(features) and back.__dict__.keys() == features.__dict__.keys()
        for name, value in features.__dict__.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(getattr(back, name), value), name
            else:
                assert getattr(back, name) == value, name
    with pytest.raises(ValueError, match="no 'embeds' tensor"):
        WukongTextFeatures.from_tensors({"token_embeds": torch.zeros(1, 2, 3)})


def test_loading_a_missing_or_foreign_file_says_what_to_do(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_embeddings(tmp_path / "none.safetensors")
    (tmp_path / "half.safetensors.partial").mkdir()
    with pytest.raises(FileNotFoundError, match="unfinished run: rerun the same `wukong embed` command"):
        load_embeddings(tmp_path / "half.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="is not a wukong embedding file"):
        load_embeddings(tmp_path / "model.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_embeddings(tmp_path / "junk.safetensors")
