"""OnnxEncoder (opt-in ONNX Runtime towers): the same features and scores as the model within fp32
rounding, the same errors, usable wherever the model encodes, exported once per model."""

import copy
import json

import pytest
import torch
from conftest import make_tiny, random_images

from wukong_hf.onnx_encoder import OnnxEncoder, onnx_available

pytestmark = pytest.mark.skipif(not onnx_available(), reason="needs the onnx extra (onnxruntime, onnx, onnxscript)")

TEXTS = ["一张猫的照片。", "狗", "这是一张很长很长的图片的描述，里面有很多很多的字，超过了三十二个字的长度限制，对吧对吧",
         "", "红三角在雪地上"]


@pytest.fixture(scope="module", params=["tiny-token-wise", "tiny-reduced"])
def exported(request, tmp_path_factory):
    """(model, processor, encoder, folder): tiny-reduced covers the CLIP text tower, [SEP] pooling,
    token reduction and the "zero" padding rule."""
    model, processor = make_tiny(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    return model, processor, OnnxEncoder.from_model(model, folder), folder


def test_features_and_scores_match_the_model(exported):
    model, processor, encoder, _ = exported
    inputs = processor(images=random_images(3), text=TEXTS)
    with torch.no_grad():
        image, text = model.encode_image(inputs["pixel_values"]), model.encode_text(inputs["input_ids"], inputs["attention_mask"])
        reference = model.score(image, text)
    onnx_image = encoder.encode_image(inputs["pixel_values"])
    onnx_text = encoder.encode_text(inputs["input_ids"], inputs["attention_mask"])
    assert onnx_image.grid == image.grid and onnx_image.num_prefix_tokens == image.num_prefix_tokens
    assert torch.equal(onnx_image.token_mask, image.token_mask) and torch.equal(onnx_text.token_mask, text.token_mask)
    assert torch.equal(onnx_text.has_padding, text.has_padding)
    assert torch.allclose(onnx_image.token_embeds, image.token_embeds, atol=1e-5)
    with torch.no_grad():
        scores = model.score(onnx_image, onnx_text)
    for ours, ref in zip(scores, reference):
        assert float((ours - ref).abs().max() / ref.abs().max()) < 1e-4
    assert torch.allclose(encoder.inverse_temperature, model.inverse_temperature.detach())


def test_encoder_stands_in_for_the_model_in_evaluation(exported):
    from wukong_hf.evaluation import LabelledImages, zero_shot_classification

    model, processor, encoder, _ = exported
    images = random_images(6, seed=3)
    labelled = LabelledImages([lambda im=im: im for im in images], [i % 3 for i in range(6)], [str(i) for i in range(6)])
    classes, templates = ["猫", "狗", "红三角"], ["{c}", "一张{c}的照片"]
    ours = zero_shot_classification(encoder, processor, labelled, classes, templates)
    reference = zero_shot_classification(model, processor, labelled, classes, templates)
    assert ours["ensemble"] == reference["ensemble"] and ours["single_prompt"] == reference["single_prompt"]


def test_reopening_reuses_the_export_and_changed_weights_export_again(exported, monkeypatch):
    model, processor, encoder, folder = exported
    exports = []

    def recorded(*args, **kwargs):
        exports.append(1)
        raise KeyboardInterrupt  # stop here: the call is what this test checks

    monkeypatch.setattr(OnnxEncoder, "export", staticmethod(recorded))
    assert OnnxEncoder.from_model(model, folder).fingerprints == encoder.fingerprints
    assert exports == []
    info = json.loads((folder / "onnx_encoder.json").read_text())
    assert info["fingerprints"] == encoder.fingerprints
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.text_projection.weight[0, 0] += 1.0
    with pytest.raises(KeyboardInterrupt):
        OnnxEncoder.from_model(changed, folder)
    assert exports == [1]


def test_bad_inputs_get_the_model_errors(exported):
    _, _, encoder, _ = exported
    with pytest.raises(ValueError, match="outside the vocabulary"):
        encoder.encode_text(torch.tensor([[101, 10**6, 102]]))
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        encoder.encode_image(torch.zeros(1, 3, 7, 7))


def test_missing_export_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no ONNX export"):
        OnnxEncoder.load(tmp_path)


def test_cli_embed_with_the_onnx_backend_writes_the_model_features(tmp_path, capsys):
    from wukong_hf.cli import main
    from wukong_hf.evaluation.embeddings import load_embeddings

    model, processor = make_tiny("tiny-token-wise")
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    (tmp_path / "captions.txt").write_text("\n".join(TEXTS[:3]) + "\n", encoding="utf-8")
    common = ["--captions", str(tmp_path / "captions.txt"), "--model", str(tmp_path / "model")]
    assert main(["embed", "texts", *common, "--backend", "onnx", "--onnx-dir", str(tmp_path / "onnx"),
                 "--output", str(tmp_path / "onnx.safetensors")]) == 0
    assert "ONNX Runtime backend" in capsys.readouterr().out
    assert main(["embed", "texts", *common, "--output", str(tmp_path / "torch.safetensors")]) == 0
    onnx, torch_file = load_embeddings(tmp_path / "onnx.safetensors"), load_embeddings(tmp_path / "torch.safetensors")
    assert onnx.ids == torch_file.ids and onnx.fingerprint == torch_file.fingerprint
    assert torch.allclose(onnx.features.embeds, torch_file.features.embeds, atol=1e-5)
    assert torch.allclose(onnx.features.token_embeds, torch_file.features.token_embeds, atol=1e-5)
