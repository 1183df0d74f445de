"""Image-tower initialisation for LiT from OpenAI-CLIP or timm weights: files, folders, Hub-style cache."""

import torch
import torch.nn.functional as F
import pytest
from safetensors.torch import save_file
from test_convert_original import official_state_dict, reference_image_tokens

from wukong_hf import WukongModel, preset_config
from wukong_hf.convert import load_image_tower, resolve_weights_file

PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def fresh_model(seed=7, **overrides):
    torch.manual_seed(seed)
    return WukongModel(preset_config("tiny-reduced", similarity="global", num_reduced_tokens=None, **overrides)).eval()


def test_openai_clip_file_initialises_the_tower(tmp_path):
    sd = official_state_dict(preset_config("tiny-reduced", num_reduced_tokens=None))
    torch.save(sd, tmp_path / "clip.pt")
    model = fresh_model()
    report = load_image_tower(model, tmp_path / "clip.pt")
    assert report.mapped["head.weight"].startswith("visual_projection")
    assert "transformer.token_embedding.weight" in report.skipped and "loss.logit_scale" in report.skipped
    # The tower stays an ordinary module: the training run locks it (LiT), not the converter.
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        expected = F.normalize(reference_image_tokens(sd, PIXELS, 4, 4)[:, 0], dim=-1)
        torch.testing.assert_close(model.encode_image(PIXELS).embeds, expected, atol=1e-5, rtol=0)


def test_timm_weights_from_folder_and_from_hub_style_cache(tmp_path, monkeypatch):
    donor = fresh_model(seed=11).vision_model.timm_model
    timm_state = {k: v.contiguous() for k, v in donor.state_dict().items()}
    (tmp_path / "folder").mkdir()
    head = torch.randn(16, 32)  # timm's CLIP towers keep the image projection as a bias-free head
    save_file({**timm_state, "head.weight": head, "head.bias": torch.zeros(16)}, tmp_path / "folder" / "model.safetensors")
    model = fresh_model()
    report = load_image_tower(model, tmp_path / "folder")
    assert len(report.mapped) == len(timm_state) + 1 and not report.skipped
    assert torch.equal(model.visual_projection.weight, head)
    assert model.vision_model.timm_model.blocks[0].attn.qkv.weight.requires_grad
    assert torch.equal(model.vision_model.timm_model.pos_embed, donor.pos_embed)

    # Hub-style cache: models--org--name/snapshots/<commit>/..., refs/main; resolved offline.
    import huggingface_hub.constants as hub_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--timm--tiny-clip-tower" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file(timm_state, snapshot / "model.safetensors")
    (tmp_path / "hub" / "models--timm--tiny-clip-tower" / "refs").mkdir()
    (tmp_path / "hub" / "models--timm--tiny-clip-tower" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    assert resolve_weights_file("timm/tiny-clip-tower") == snapshot / "model.safetensors"
    model = fresh_model()
    load_image_tower(model, "timm/tiny-clip-tower")
    assert torch.equal(model.vision_model.timm_model.blocks[1].mlp.fc2.weight, donor.blocks[1].mlp.fc2.weight)
    with pytest.raises(FileNotFoundError, match="Hub repo timm/absent has none of model.safetensors.*Offline"):
        resolve_weights_file("timm/absent")


def test_wrong_tower_and_wrong_sources_are_explained(tmp_path):
    donor = fresh_model().vision_model.timm_model.state_dict()
    save_file({k: v for k, v in donor.items() if "blocks.1." not in k}, tmp_path / "short.safetensors")
    with pytest.raises(ValueError, match="lack 12 keys of vit_base_patch32_clip_quickgelu_224: blocks.1"):
        load_image_tower(fresh_model(), tmp_path / "short.safetensors")
    save_file({**donor, "norm.weight": torch.ones(64)}, tmp_path / "wide.safetensors")
    with pytest.raises(ValueError, match=r"norm.weight has shape \(64,\), .* expects \(32,\)"):
        load_image_tower(fresh_model(), tmp_path / "wide.safetensors")
    save_file({**donor, "head.weight": torch.randn(10, 32), "head.bias": torch.randn(10)}, tmp_path / "cls.safetensors")
    report = load_image_tower(fresh_model(), tmp_path / "cls.safetensors")
    assert "is a classifier or does not fit projection_dim=16" in report.skipped["head.weight"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds none of model.safetensors"):
        resolve_weights_file(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="neither a file, a folder nor a Hub repo id"):
        resolve_weights_file(tmp_path / "no" / "such" / "file.pt")
    clip_tower = WukongModel(preset_config("tiny-clip-vision"))
    with pytest.raises(ValueError, match="needs a timm image tower"):
        load_image_tower(clip_tower, tmp_path / "short.safetensors")
