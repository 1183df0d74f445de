"""A hand-set model scores 100% on a separable colour toy set; the CLI runs end to end."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny
from huggingface_hub import EvalResult
from PIL import Image
from test_eval_readers import COLOURS, write_chinese_clip

from wukong_hf import WukongImageFeatures, WukongTextFeatures
from wukong_hf.cli import main
from wukong_hf.evaluation import (
    commands,
    evaluate_retrieval,
    hf_dataset_images,
    image_folder_images,
    read_chinese_clip,
    zero_shot_classification,
)

DIM = 16  # tiny presets project to 16 dims


def colour_model(similarity: str):
    """A tiny model whose features are set by hand: an image is its dominant channel, a text the colour it names."""
    model, processor = make_tiny("tiny-global" if similarity == "global" else "tiny-token-wise")
    vocab = processor.tokenizer.get_vocab()
    colour_ids = torch.tensor([vocab[c] for c in COLOURS])

    def encode_image(pixel_values):
        hot = F.one_hot(pixel_values.mean(dim=(2, 3)).argmax(dim=1), DIM).float()
        tokens = hot[:, None].repeat(1, 3, 1)
        return WukongImageFeatures(embeds=hot, token_embeds=tokens, token_mask=torch.ones(len(hot), 3, dtype=torch.bool))

    def encode_text(input_ids, attention_mask=None):
        # the first colour character named; templates add no colour characters.
        found = (input_ids[:, :, None] == colour_ids).float()
        first = found.amax(dim=1).argmax(dim=1)
        hot = F.one_hot(first, DIM).float()
        tokens = torch.where(found.amax(dim=2, keepdim=True) > 0, hot[:, None], F.one_hot(torch.full_like(input_ids, DIM - 1), DIM).float())
        return WukongTextFeatures(embeds=hot, token_embeds=tokens, token_mask=attention_mask.bool())

    model.encode_image, model.encode_text = encode_image, encode_text
    return model, processor


def colour_tree(root):
    for cls, rgb in COLOURS.items():
        (root / cls).mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (12, 10), tuple(max(0, v - 30 * k) for v in rgb)).save(root / cls / f"{k}.png")
    return root


@pytest.mark.parametrize("similarity,ensemble", [("global", None), ("token_wise", None), ("token_wise", "probability")])
def test_zero_shot_is_perfect_on_separable_toy_set(tmp_path, similarity, ensemble):
    model, processor = colour_model(similarity)
    colour_tree(tmp_path / "tree")
    (tmp_path / "tree" / "红" / "bad.png").write_bytes(b"not an image")
    images = image_folder_images(tmp_path / "tree")
    templates = ["{c}色的照片。", "一张{c}的图。"]
    result = zero_shot_classification(model, processor, images, images.folder_classes, templates, ensemble=ensemble, batch_size=4)
    for setting in ("single_prompt", "ensemble"):
        # 2 classes: top-5 would count every image, so it is not reported.
        assert result[setting] == {"top1": 100.0, "mean_per_class_recall": 100.0}
    assert result["num_images"] == 6 and result["skipped_images"][0]["id"] == "红/bad.png"
    assert "UnidentifiedImageError" in result["skipped_images"][0]["reason"]


@pytest.mark.parametrize("similarity", ["global", "token_wise"])
def test_retrieval_is_perfect_on_separable_toy_set(tmp_path, similarity):
    model, processor = colour_model(similarity)
    rs = read_chinese_clip(write_chinese_clip(tmp_path / "set"), "valid", name="muge")
    result = evaluate_retrieval(model, processor, rs, batch_size=2)
    assert result["metrics"] == {"t2i_R@1": 100.0, "t2i_R@5": 100.0, "t2i_R@10": 100.0, "MR": 100.0}


def test_zero_shot_rejects_labels_beyond_class_names(tmp_path):
    model, processor = colour_model("global")
    images = image_folder_images(colour_tree(tmp_path / "tree"))
    with pytest.raises(ValueError, match=r"Labels \[2\] are outside the 2 class names"):
        zero_shot_classification(model, processor, images, ["红", "绿"], ["{c}"])


def _check_report(folder, task_type):
    result = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    assert result["model_index"], "no model_index entries"
    for entry in result["model_index"]:
        assert entry["task_type"] == task_type and entry["source"] == "measured"
        # The Hub helper builds EvalResults from the entries; "source" is our own marker, not an EvalResult field.
        EvalResult(**{k: v for k, v in entry.items() if k != "source"})
    return result, (folder / "results.md").read_text(encoding="utf-8")


def test_cli_zero_shot_retrieval_and_make_dataset_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(commands, "load_model_and_processor", lambda model, preset: colour_model("token_wise"))
    colour_tree(tmp_path / "tree")
    (tmp_path / "names.txt").write_text("\n".join(sorted(COLOURS)) + "\n", encoding="utf-8")
    out = tmp_path / "zs"
    assert main(["eval", "zero-shot", "--image-folder", str(tmp_path / "tree"), "--classnames", str(tmp_path / "names.txt"),
                 "--templates", "imagenet1k", "--dataset-name", "colours", "--output", str(out)]) == 0
    result, table = _check_report(out, "zero-shot-image-classification")
    assert result["ensemble"]["top1"] == 100.0 and result["num_templates"] == 80
    assert "| Model | colours |" in table and "ensemble (similarity) | 100.00 |" in table

    write_chinese_clip(tmp_path / "flickr", split="test")
    assert main(["eval", "make-dataset", "--data", str(tmp_path / "flickr"), "--split", "test", "--name", "flickr30k-cn",
                 "--output", str(tmp_path / "ds")]) == 0
    out = tmp_path / "rt"
    assert main(["eval", "retrieval", "--format", "dataset", "--data", str(tmp_path / "ds"), "--split", "test",
                 "--output", str(out)]) == 0
    result, table = _check_report(out, "other")  # the Hub has no image-text retrieval task id
    assert result["dataset"] == "flickr30k-cn" and result["metrics"]["t2i_R@1"] == 100.0
    # image 0 has two captions (red, and text 102 "blue sky" shared with image 2): its red caption still ranks first.
    assert result["metrics"]["i2t_R@1"] == 100.0
    assert "| flickr30k-cn (test) |" in table and table.count("100.00") == 7


def test_cli_reports_bad_input_as_error(tmp_path, capsys):
    assert main(["eval", "retrieval", "--format", "aic-icc", "--data", str(tmp_path / "a.json"), "--output", str(tmp_path)]) == 2
    assert "needs the image folder (--images DIR)" in capsys.readouterr().err


def test_zero_shot_from_a_datasets_folder_uses_its_class_label_names(tmp_path):
    colour_tree(tmp_path / "tree")
    images = hf_dataset_images(str(tmp_path / "tree"), split="train")
    assert images.folder_classes == sorted(COLOURS) and len(images.loaders) == 6
    model, processor = colour_model("global")
    result = zero_shot_classification(model, processor, images, images.folder_classes, ["{c}"])
    assert result["single_prompt"]["top1"] == 100.0 and result["ensemble"] is None
    with pytest.raises(ValueError, match=r"has no column 'lbl' .* pass --image-column / --label-column"):
        hf_dataset_images(str(tmp_path / "tree"), split="train", label_column="lbl")


@pytest.mark.parametrize("preset", ["tiny-token-wise", "tiny-reduced", "tiny-global"])
def test_cli_retrieval_runs_real_tiny_towers(tmp_path, preset):
    write_chinese_clip(tmp_path / "set")
    assert main(["eval", "retrieval", "--preset", preset, "--data", str(tmp_path / "set"), "--output", str(tmp_path / "out")]) == 0
    result, _ = _check_report(tmp_path / "out", "other")
    assert result["model"] == f"{preset} (random init)" and result["num_images"] == 3 and result["num_texts"] == 3
    assert set(result["metrics"]) == {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)} | {"MR"}
    assert all(0.0 <= v <= 100.0 for v in result["metrics"].values())
