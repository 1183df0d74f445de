"""The Space's tabs, called as the page calls them: results checked against transformers' pipeline, the
model's own forward and the similarity functions; every bad input answered with a message, never raised."""

import os

import numpy as np
import pytest
import torch
from conftest import make_tiny, random_images
from PIL import Image
from transformers import pipeline

from wukong_hf.cli import main
from wukong_hf.similarity import global_similarity, token_wise_similarity
from wukong_hf.space.handlers import (
    ENSEMBLE_CHOICE,
    SpaceSession,
    alignment_tab,
    load_session,
    parse_labels,
    search_tab,
    zero_shot_tab,
)
from wukong_hf.space.image_index import ImageFolderIndex
from wukong_hf.visualize import word_patch_alignment


def _session(preset="tiny-token-wise", index=None, templates="imagenet1k", **overrides) -> SpaceSession:
    model, processor = make_tiny(preset, **overrides)
    return SpaceSession(model, processor, preset, index, templates, model_key=preset)


def _image_file(folder, name="cat.png", seed=0, size=(48, 40)):
    path = folder / name
    random_images(1, size=size, seed=seed)[0].save(path)
    return path


def _templates_file(tmp_path, templates=("{c}", "一张{c}的照片。", "{c}在雪地上")):
    path = tmp_path / "templates.txt"
    path.write_text("\n".join(templates), encoding="utf-8")
    return path


# ----- labels and uploads -------------------------------------------------------------------------
def test_labels_split_on_ascii_and_fullwidth_commas():
    assert parse_labels("猫, 狗，飞机、汽车\n船; 猫") == ["猫", "狗", "飞机", "汽车", "船"]


@pytest.mark.parametrize("text, message", [("", "Enter at least two labels"), (" ，, ", "Enter at least two labels"),
                                           ("猫", "Only one label (猫)")])
def test_too_few_labels_get_a_message(tmp_path, text, message):
    result, shown = zero_shot_tab(_session(), _image_file(tmp_path), text, "{c}")
    assert result is None and message in shown and shown.startswith("⚠️")


def test_uploads_that_are_not_images_get_a_message(tmp_path):
    session = _session()
    text_file = tmp_path / "notes.png"
    text_file.write_text("not a picture")
    truncated = tmp_path / "half.png"
    truncated.write_bytes(_image_file(tmp_path).read_bytes()[:60])
    for upload in (str(text_file), {"path": str(text_file), "orig_name": "notes.png"}, str(truncated)):
        result, shown = zero_shot_tab(session, upload, "猫, 狗", "{c}")
        assert result is None and "is not an image this app can read" in shown
        assert str(tmp_path) not in shown  # PIL's message names the server's temp path; the page does not
    assert "Upload an image first" in zero_shot_tab(session, None, "猫, 狗", "{c}")[1]
    assert "Upload an image first" in alignment_tab(session, None, "猫")[1]


def test_a_prompt_without_a_label_slot_gets_a_message(tmp_path):
    result, shown = zero_shot_tab(_session(), _image_file(tmp_path), "猫, 狗", "一张照片")
    assert result is None and "write {c} where the label goes" in shown


def test_unexpected_failures_are_one_line_in_the_page(tmp_path, monkeypatch, caplog):
    session = _session()

    def broken(*args, **kwargs):
        raise RuntimeError("tower exploded")

    monkeypatch.setattr(session.model, "encode_image", broken)
    result, shown = zero_shot_tab(session, _image_file(tmp_path), "猫, 狗", "{c}")
    assert result is None and shown == "⚠️ Something went wrong (RuntimeError: tower exploded); the server log has the details."
    assert "Traceback" in caplog.text  # the server log keeps it


# ----- zero-shot ------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["tiny-token-wise", "tiny-global"])
def test_one_prompt_gives_the_transformers_pipeline_probabilities(tmp_path, preset):
    session = _session(preset)
    path = _image_file(tmp_path)
    labels = ["猫", "狗", "飞机"]
    result, shown = zero_shot_tab(session, str(path), "猫，狗, 飞机", "{c}的照片。")
    assert shown == ""
    classifier = pipeline("zero-shot-image-classification", model=session.model,
                          image_processor=session.processor.image_processor, tokenizer=session.processor.tokenizer)
    expected = {r["label"]: r["score"] for r in classifier(Image.open(path), candidate_labels=labels,
                                                           hypothesis_template="{}的照片。")}
    assert result.probabilities == pytest.approx(expected, abs=1e-5)
    assert list(result.probabilities) == sorted(labels, key=lambda k: -expected[k])  # highest first
    assert "softmax over the 3 labels" in result.explanation and "「{c}的照片。」" in result.explanation


def _forward_similarities(session, image, labels, templates) -> torch.Tensor:
    """(templates, labels) unscaled image-to-text similarity from the model's forward, one template at a time."""
    rows = []
    with torch.no_grad():
        for template in templates:
            inputs = session.processor(text=[template.replace("{c}", c) for c in labels], images=[image])
            rows.append(session.model(**inputs).logits_per_image[0] / session.model.inverse_temperature)
    return torch.stack(rows)


@pytest.mark.parametrize("preset, ensemble", [("tiny-token-wise", "similarity"), ("tiny-token-wise", "probability"),
                                              ("tiny-global", "embedding")])
def test_the_prompt_ensemble_is_the_models_own(tmp_path, preset, ensemble):
    templates = ["{c}", "一张{c}的照片。", "{c}在雪地上"]
    session = _session(preset, templates=_templates_file(tmp_path, templates), zero_shot_ensemble=ensemble)
    image = random_images(1, seed=5)[0]
    labels = ["猫", "狗", "飞机", "船"]
    result, shown = zero_shot_tab(session, image, ", ".join(labels), ENSEMBLE_CHOICE)
    assert shown == "" and "3 prompts" in result.explanation
    scale = session.model.inverse_temperature
    if ensemble == "similarity":  # the paper: mean similarity over prompts, then the usual scaled softmax
        expected = (scale * _forward_similarities(session, image, labels, templates).mean(0)).softmax(0)
    elif ensemble == "probability":  # the released code: mean over prompts of the unscaled softmax
        expected = _forward_similarities(session, image, labels, templates).softmax(1).mean(0)
        assert "unscaled" in result.explanation
    else:  # the paper's global ensemble: the similarity to each label's mean prompt embedding
        with torch.no_grad():
            image_embed = session.model.get_image_features(**session.processor(images=[image])).pooler_output
            texts = [t.replace("{c}", c) for c in labels for t in templates]
            text_embeds = session.model.get_text_features(**session.processor(text=texts)).pooler_output
        classes = torch.nn.functional.normalize(text_embeds.reshape(len(labels), len(templates), -1).mean(1), dim=-1)
        expected = (scale * (image_embed @ classes.t())[0]).softmax(0)
    got = torch.tensor([result.probabilities[c] for c in labels])
    assert torch.allclose(got, expected.float(), atol=1e-5)
    assert got.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_the_80_prompt_ensemble_reads_the_imagenet_templates(tmp_path):
    result, shown = zero_shot_tab(_session(), _image_file(tmp_path), "猫, 狗", ENSEMBLE_CHOICE)
    assert shown == "" and "80 prompts" in result.explanation


def test_a_missing_ensemble_says_why(tmp_path):
    session = _session(templates=tmp_path / "absent.txt")
    result, shown = zero_shot_tab(session, _image_file(tmp_path), "猫, 狗", ENSEMBLE_CHOICE)
    assert result is None and "prompt ensemble is not available" in shown and "absent.txt" in shown


# ----- search -----------------------------------------------------------------------------------------
def _folder(tmp_path, count=6, broken=True, other=True):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i in range(count):
        _image_file(folder if i % 2 else folder / "sub", f"img{i}.png", seed=i)
    if broken:
        (folder / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    if other:
        (folder / "notes.txt").write_text("captions", encoding="utf-8")
    (folder / ".hidden.png").write_text("ignored: hidden")
    return folder


def _reference_scores(session, paths, query, rule_kind):
    """Text-to-image scores of every image, straight from the model and the similarity functions."""
    images = [Image.open(p).convert("RGB") for p in paths]
    with torch.no_grad():
        image = session.model.encode_image(session.processor(images=images)["pixel_values"])
        text = session.model.encode_text(**session.processor(text=[query]))
    if rule_kind == "global":
        return global_similarity(image.embeds, text.embeds)[:, 0]
    return token_wise_similarity(image.token_embeds, text.token_embeds, image.token_mask, text.token_mask)[1][0]


@pytest.mark.parametrize("preset, kind", [("tiny-token-wise", "token_wise"), ("tiny-global", "global")])
def test_search_ranks_the_folder_as_the_similarity_functions_do(tmp_path, preset, kind):
    folder = _folder(tmp_path)
    session = _session(preset, index=ImageFolderIndex(folder, tmp_path / "cache"))
    result, shown = search_tab(session, "一只红色的猫", top_k=4, shortlist=256)
    assert shown == ""
    names = sorted(p for p in folder.rglob("img*.png"))
    reference = _reference_scores(session, names, "一只红色的猫", kind)
    order = reference.argsort(descending=True)[:4].tolist()
    assert [p for p, _ in result.hits] == [names[i] for i in order]
    assert [s for _, s in result.hits] == pytest.approx(reference[order].tolist(), abs=1e-5)
    assert "Skipped 1 unreadable image file(s): broken.jpg" in result.explanation
    assert "Ignored 1 file(s) that are not images (e.g. notes.txt)" in result.explanation
    assert "6 images of" in result.explanation
    assert ("re-ranked" in result.explanation) == (kind == "token_wise")


def test_a_short_shortlist_reranks_the_global_top_only(tmp_path):
    folder = _folder(tmp_path, count=8, broken=False, other=False)
    session = _session(index=ImageFolderIndex(folder, None))
    result, _ = search_tab(session, "猫", top_k=8, shortlist=3)
    names = sorted(folder.rglob("img*.png"))
    global_top = _reference_scores(session, names, "猫", "global").topk(3).indices.tolist()
    assert len(result.hits) == 3 and {p for p, _ in result.hits} == {names[i] for i in global_top}
    assert "global top 3 of 8 images" in result.explanation


def test_search_features_are_cached_on_disk_and_invalidated_by_file_changes(tmp_path):
    folder = _folder(tmp_path)
    cache = tmp_path / "cache"
    first, _ = search_tab(_session(index=ImageFolderIndex(folder, cache)), "猫", 6)
    assert "cached on disk" in first.explanation and len(list(cache.glob("*.safetensors"))) == 1
    # A new page (new index object) with the same model and files reads the cache, skipped file included.
    again = ImageFolderIndex(folder, cache)
    second, _ = search_tab(_session(index=again), "猫", 6)
    assert "read from the disk cache" in second.explanation and "Skipped 1 unreadable" in second.explanation
    assert second.hits == first.hits
    # Touching one image file makes a new key: encoded again.
    touched = next(folder.rglob("img0.png"))
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    third, _ = search_tab(_session(index=again), "猫", 6)
    assert "encoded in" in third.explanation and len(list(cache.glob("*.safetensors"))) == 2
    # Another model never reads the first model's features.
    other = _session(index=ImageFolderIndex(folder, cache))
    other.model_key = "another model"
    assert "encoded in" in search_tab(other, "猫", 6)[0].explanation


def test_search_bad_input_gets_a_message(tmp_path):
    assert "start the app with --images FOLDER" in search_tab(_session(), "猫")[1]
    folder = _folder(tmp_path, count=2)
    assert "Type a Chinese query first" in search_tab(_session(index=ImageFolderIndex(folder)), "  ")[1]
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    for name in ("a.png", "b.jpg"):
        (unreadable / name).write_text("not an image")
    result, shown = search_tab(_session(index=ImageFolderIndex(unreadable)), "猫")
    assert result is None and "None of the 2 image file(s)" in shown and "a.png" in shown


# ----- alignment ----------------------------------------------------------------------------------------
def test_alignment_colours_each_patch_by_its_best_token(tmp_path):
    session = _session()
    image = random_images(1, size=(64, 48), seed=2)[0]
    result, shown = alignment_tab(session, image, "红三角")
    assert shown == ""
    expected = word_patch_alignment(session.model, session.processor, image, "红三角")
    assert result.tokens == ["[CLS]", "红", "三", "角", "[SEP]"]
    counts = torch.bincount(expected.token_index.flatten(), minlength=5).float()
    assert result.shares == pytest.approx((counts / counts.sum()).tolist())
    masks = np.stack([mask > 0 for mask, _ in result.annotations])  # (tokens, H, W) at display size
    assert masks.shape[1:] == (result.image.size[1], result.image.size[0]) and max(result.image.size) == 448
    # Inside the centre crop every pixel belongs to exactly one token; outside it to none.
    width, height = result.image.size
    left = (width - height) // 2
    assert (masks[:, :, left + 2 : left + height - 2].sum(0) == 1).all()
    assert not masks[:, :, : left - 1].any()
    names = [name for _, name in result.annotations]
    assert names[1].startswith("红 · ") and set(names) == set(result.colours)  # CJK in the legend, not indices
    assert "**红**" in result.legend and "1 = 红" in result.legend and "centre crop" in result.legend
    assert result.figure.size == result.image.size


def test_alignment_keeps_repeated_characters_apart(tmp_path):
    result, _ = alignment_tab(_session(), random_images(1, seed=1)[0], "红红")
    assert len({name for _, name in result.annotations}) == 4


@pytest.mark.parametrize("preset, message", [("tiny-global", "its patch tokens are never trained to match words"),
                                             ("tiny-reduced", "reduces its patches")])
def test_alignment_explains_which_models_cannot_draw_it(tmp_path, preset, message):
    result, shown = alignment_tab(_session(preset), _image_file(tmp_path), "猫")
    assert result is None and message in shown and "token-wise" in shown


def test_alignment_needs_a_label(tmp_path):
    assert "Type a label first" in alignment_tab(_session(), _image_file(tmp_path), " ")[1]


# ----- loading and the command line ---------------------------------------------------------------------
def test_load_session_reads_a_saved_model_and_checks_the_folder(tmp_path):
    model, processor = make_tiny()
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    session = load_session(str(tmp_path / "model"), images=_folder(tmp_path), cache_dir=None)
    assert session.rule.uses_tokens and session.index.cache_dir is None
    assert "token-wise" in session.describe() and str(tmp_path / "images") in session.describe()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"has no image files \(.*\): it is empty; give --images"):
        load_session(str(tmp_path / "model"), images=tmp_path / "empty")


def test_load_session_refuses_models_that_are_not_wukong(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="is a BertModel, not a Wukong model"):
        load_session(str(tmp_path / "bert"))


def test_load_session_names_what_a_local_model_folder_lacks(tmp_path):
    # Regression: a saved model without its processor was reported as "not a local folder, and the Hub did
    # not give it"; the Space now loads through model_folders, whose message names the missing tokenizer.
    model, _ = make_tiny()
    model.save_pretrained(tmp_path / "model")
    with pytest.raises(FileNotFoundError, match=r"model folder .*model has no tokenizer \(tokenizer.json\): save the "
                                                r"processor beside the model"):
        load_session(str(tmp_path / "model"))


def test_load_session_offline_hub_id_says_the_hub_did_not_give_it(monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network: the Hub id cannot be fetched
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import, so patch it too
    with pytest.raises(FileNotFoundError, match=r"Cannot load --model nobody/no-such-wukong-model: not a local folder, "
                                                r"and the Hub did not give it \(.*\); give a folder saved by"):
        load_session("nobody/no-such-wukong-model")


@pytest.mark.parametrize("args, message", [
    (["--model", "no/such/folder"], "no such folder, and not a Hub id"),
    (["--model", "{tmp}"], "is not a saved model folder (no config.json in it)"),
    (["--model", "{tmp}", "--images", "{tmp}/absent"], "Image folder {tmp}/absent does not exist"),
])
def test_wukong_space_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["space", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wukong space: error: ") and message.replace("{tmp}", str(tmp_path)) in err
    assert len(err.splitlines()) == 1


def test_wukong_space_says_when_the_port_is_taken(tmp_path, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["space", "--model", "unused/model", "--port", str(port)]) == 2
    assert f"cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err
