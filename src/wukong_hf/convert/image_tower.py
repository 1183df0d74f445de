"""Initialise the image tower for LiT from pretrained OpenAI-CLIP or timm weights (file, folder or Hub id).

The weights go through timm's own checkpoint filter for the tower's architecture (OpenAI-CLIP
ViT keys, open_clip, original Swin, ... are all handled there). A source text tower is reported
and left out: LiT trains the Chinese text tower from scratch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..model_folders import save_model_folder
from ..modeling_wukong import WukongModel
from ..presets import preset_config
from ..processing_wukong import WukongProcessor
from .checkpoint_files import load_state_dict_file
from .original import ConversionReport, _timm_filter

__all__ = ["resolve_weights_file", "load_image_tower", "init_lit_model", "WEIGHT_FILE_NAMES"]

# File names tried, in order, in a folder or Hub repo (timm / open_clip / transformers conventions).
WEIGHT_FILE_NAMES = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
)


def resolve_weights_file(source: str | Path, revision: str | None = None) -> Path:
    """A weights file, a folder holding one, or a Hub repo id (through huggingface_hub's cache) -> file path."""
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        for name in WEIGHT_FILE_NAMES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path} holds none of {', '.join(WEIGHT_FILE_NAMES)}; pass the weights file itself.")
    if path.is_absolute() or str(source).count("/") != 1:
        raise FileNotFoundError(f"{source} is neither a file, a folder nor a Hub repo id (org/name).")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    errors = []
    for name in WEIGHT_FILE_NAMES:
        try:
            return Path(hf_hub_download(str(source), name, revision=revision))
        except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError) as err:
            errors.append(f"{name}: {type(err).__name__}")
    raise FileNotFoundError(
        f"Hub repo {source} has none of {', '.join(WEIGHT_FILE_NAMES)} reachable ({'; '.join(errors)}). "
        "Offline? Download it once with network access, or pass a local file."
    )


def load_image_tower(
    model: WukongModel, source: str | Path, *, revision: str | None = None
) -> ConversionReport:
    """Load pretrained image-tower weights into `model.vision_model` (timm towers), the start of LiT.

    Args:
        model: a WukongModel whose vision_config is a timm architecture matching the weights.
        source: weights file (safetensors / torch / numpy pickle), folder, or Hub repo id.

    Returns:
        ConversionReport: tower keys mapped, source keys left out (text tower, classifier head).
        A bias-free projection head (OpenAI-CLIP's `visual.proj`, the head of timm's CLIP towers) also
        initialises `visual_projection` when the shapes agree. timm's filter resamples the position
        embedding when the configured image size differs from the weights'.
    """
    if model.config.vision_config.model_type != "timm_wrapper":
        raise ValueError(
            "load_image_tower needs a timm image tower (vision_config.model_type='timm_wrapper'); for "
            "Chinese-CLIP weights use `wukong convert chinese-clip`."
        )
    path = resolve_weights_file(source, revision)
    state = load_state_dict_file(path)
    report = ConversionReport(source=str(source), variant=model.config.vision_config.architecture)
    timm_model = model.vision_model.timm_model
    if any(k.startswith("visual.") for k in state):  # a full CLIP checkpoint: only visual.* is the image tower
        for key in state:
            if not key.startswith("visual."):
                report.skipped[key] = "source text tower / temperature: not used (LiT trains the text tower)"
    mapped = _timm_filter(timm_model)(state, timm_model)
    # timm turns OpenAI-CLIP's visual.proj into a bias-free head; it is the image projection.
    head_weight, head_bias = mapped.get("head.weight"), mapped.get("head.bias")
    expected = timm_model.state_dict()
    for key in [k for k in mapped if k not in expected]:
        report.skipped[key] = "not part of the image tower (classifier head or text tower): not used"
        del mapped[key]
    missing = sorted(k for k in expected if k not in mapped)
    if missing:
        raise ValueError(
            f"{path}: the image-tower weights lack {len(missing)} keys of {report.variant}: "
            f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}. The file is not a {report.variant} tower."
        )
    for key, value in mapped.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"{path}: tower weight {key} has shape {tuple(value.shape)}, {report.variant} as configured expects "
                f"{tuple(expected[key].shape)}; check the architecture and model_args (image size, width)."
            )
        report.mapped[key] = f"vision_model.timm_model.{key}"
    timm_model.load_state_dict(mapped, strict=True)
    if head_weight is not None:
        fits = tuple(head_weight.shape) == tuple(model.visual_projection.weight.shape)
        if fits and (head_bias is None or not head_bias.any()):
            with torch.no_grad():
                model.visual_projection.weight.copy_(head_weight)
            report.mapped["head.weight"] = "visual_projection.weight (the CLIP image projection)"
            report.skipped.pop("head.weight", None)
            report.skipped.pop("head.bias", None)
        else:
            report.skipped["head.weight"] = (
                f"head {tuple(head_weight.shape)} is a classifier or does not fit projection_dim="
                f"{model.config.projection_dim}: visual_projection keeps its random initialisation"
            )
    return report


def init_lit_model(
    preset: str, weights: str | Path, out_dir: str | Path, *, revision: str | None = None
) -> ConversionReport:
    """A new WukongModel of `preset` whose image tower holds pretrained `weights`, saved with its
    processor to `out_dir` (plus conversion_report.json) as the starting point of LiT training.

    The folder is an ordinary model: the training run locks the tower (`model.lock_image_tower`
    in the training config, true by default)."""
    model = WukongModel(preset_config(preset))
    report = load_image_tower(model, weights, revision=revision)
    out_dir = Path(out_dir)
    save_model_folder(out_dir, model, WukongProcessor.from_config(model.config),
                      {"conversion_report.json": report.to_json()})
    return report
