"""Convert the released Wukong checkpoints (OpenAI-CLIP key layout) into a WukongModel folder.

Layout of the releases (docs/wukong-facts.md): ``visual.*`` (OpenAI-CLIP ViT, or Microsoft Swin with a
``head`` projection), ``visual.token_learner.*`` (token reduction, "Wukong" variants),
``transformer.*`` (causal text transformer + ``text_projection``) and ``loss.logit_scale``.

* ViT image tower -> timm ``vit_*_clip_quickgelu`` through timm's own OpenAI-CLIP filter;
  ``visual.proj`` (C, D) -> ``visual_projection.weight`` (D, C).
* Swin image tower -> timm ``swin_*`` through timm's Swin filter (downsample moved from the end of
  a stage to the start of the next); ``visual.head`` (Linear with bias) -> ``visual_projection``,
  its bias folded exactly into the final LayerNorm bias (see ``_fold_head_bias``).
* Text tower -> transformers ``CLIPTextModel`` (fused in_proj split into q/k/v);
  ``transformer.text_projection`` (W, D) -> ``text_projection.weight`` (D, W).
"""

from __future__ import annotations

import copy
import importlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..configuration_wukong import WukongConfig
from ..model_folders import save_model_folder
from ..modeling_wukong import WukongModel
from ..presets import preset_config
from ..processing_wukong import WukongProcessor
from .checkpoint_files import load_state_dict_file

__all__ = [
    "ConversionReport",
    "original_to_wukong_state_dict",
    "convert_original_checkpoint",
    "load_variant_config",
]

# Non-persistent buffers some releases saved; the model recomputes them.
_RECOMPUTED_BUFFERS = ("relative_position_index", "attn_mask", "relative_coords_table")
_TEXT_BLOCK_RENAMES = {
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}


@dataclass
class ConversionReport:
    """What happened to every key: mapped (source -> target), skipped (source -> reason), notes."""

    source: str
    variant: str
    mapped: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)

    def summary(self) -> str:
        lines = [f"{self.source} -> {self.variant}: {len(self.mapped)} keys mapped, {len(self.skipped)} skipped"]
        lines += [f"  skipped {key}: {reason}" for key, reason in sorted(self.skipped.items())]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _timm_filter(timm_model: torch.nn.Module):
    """timm's checkpoint filter for this architecture (lives beside the model class in timm)."""
    module = importlib.import_module(type(timm_model).__module__)
    if not hasattr(module, "checkpoint_filter_fn"):
        raise ValueError(f"timm module {module.__name__} has no checkpoint_filter_fn to map foreign weights.")
    return module.checkpoint_filter_fn


def _check_shape(key: str, value: torch.Tensor, expected: tuple, variant: str) -> None:
    if tuple(value.shape) != tuple(expected):
        raise ValueError(
            f"checkpoint key {key} has shape {tuple(value.shape)} but variant {variant!r} expects {tuple(expected)}; "
            "the checkpoint belongs to another variant (choose the matching --variant, see `wukong presets`)."
        )


def _map_vit(visual: dict[str, torch.Tensor], timm_model, report: ConversionReport) -> dict[str, torch.Tensor]:
    """OpenAI-CLIP ViT keys (without "visual.") -> timm VisionTransformer keys, via timm's filter."""
    if "class_embedding" not in visual:
        raise ValueError("the checkpoint's visual tower has no class_embedding: it is not an OpenAI-CLIP ViT.")
    # timm's filter would silently resample a mismatched grid or patch size: refuse instead.
    _check_shape("visual.positional_embedding", visual["positional_embedding"], timm_model.pos_embed.shape[1:], report.variant)
    _check_shape("visual.conv1.weight", visual["conv1.weight"], timm_model.patch_embed.proj.weight.shape, report.variant)
    mapped = _timm_filter(timm_model)({f"visual.{k}": v for k, v in visual.items()}, timm_model)
    mapped.pop("head.bias", None)
    mapped.pop("head.weight", None)
    for key in visual:
        report.mapped[f"visual.{key}"] = "vision_model.timm_model.* (timm vision_transformer.checkpoint_filter_fn)"
    return mapped


def _map_swin(visual: dict[str, torch.Tensor], timm_model, report: ConversionReport) -> dict[str, torch.Tensor]:
    """Microsoft Swin keys (without "visual.", head removed) -> timm SwinTransformer keys, via timm's filter."""
    kept = {}
    for key, value in visual.items():
        if key.rsplit(".", 1)[-1] in _RECOMPUTED_BUFFERS:
            report.skipped[f"visual.{key}"] = "buffer recomputed by timm's Swin"
        else:
            kept[key] = value
            report.mapped[f"visual.{key}"] = "vision_model.timm_model.* (timm swin_transformer.checkpoint_filter_fn)"
    return _timm_filter(timm_model)(kept, timm_model)


def _fold_head_bias(weight: torch.Tensor, bias: torch.Tensor, norm_bias: torch.Tensor) -> torch.Tensor:
    """New final-LayerNorm bias beta' with W beta' = W beta + b, so that W norm'(x) == W norm(x) + b.

    Our projection has no bias (one Linear for every head); W (D, C) with D <= C has full row rank
    in practice, so beta' = beta + pinv(W) b reproduces the bias exactly.
    """
    delta = torch.linalg.pinv(weight.double()) @ bias.double()
    residual = (weight.double() @ delta - bias.double()).abs().max().item()
    if residual > 1e-5 * (1 + bias.abs().max().item()):
        raise ValueError(
            f"visual.head.bias cannot be folded into the image tower (residual {residual:.2e}): the projection "
            f"{tuple(weight.shape)} is not of full row rank. This checkpoint needs a projection with bias."
        )
    return (norm_bias.double() + delta).to(norm_bias.dtype)


def _map_text(text: dict[str, torch.Tensor], report: ConversionReport) -> dict[str, torch.Tensor]:
    """Official text transformer keys (without "transformer.") -> CLIPTextModel keys under "text_model."."""
    # transformers ships no library function for OpenAI-CLIP text keys (only a one-off script), hence this table.
    out = {}
    for key, value in text.items():
        src = f"transformer.{key}"
        block = re.fullmatch(r"resblocks\.(\d+)\.(.+)", key)
        if key == "token_embedding.weight":
            out[src] = {"text_model.embeddings.token_embedding.weight": value}
        elif key == "positional_embedding":
            out[src] = {"text_model.embeddings.position_embedding.weight": value}
        elif key in ("ln_final.weight", "ln_final.bias"):
            out[src] = {f"text_model.final_layer_norm.{key.split('.')[1]}": value}
        elif key == "text_projection":
            out[src] = {"text_projection.weight": value.t().contiguous()}
        elif block and block.group(2) in ("attn.in_proj_weight", "attn.in_proj_bias"):
            prefix = f"text_model.encoder.layers.{block.group(1)}.self_attn"
            kind = "weight" if block.group(2).endswith("weight") else "bias"
            q, k, v = value.chunk(3, dim=0)
            out[src] = {f"{prefix}.q_proj.{kind}": q, f"{prefix}.k_proj.{kind}": k, f"{prefix}.v_proj.{kind}": v}
        elif block and block.group(2) in _TEXT_BLOCK_RENAMES:
            out[src] = {f"text_model.encoder.layers.{block.group(1)}.{_TEXT_BLOCK_RENAMES[block.group(2)]}": value}
        elif key.rsplit(".", 1)[-1] in _RECOMPUTED_BUFFERS:
            report.skipped[src] = "causal mask buffer, rebuilt by CLIPTextModel"
    flat = {}
    for src, targets in out.items():
        report.mapped[src] = ", ".join(targets)
        flat.update(targets)
    return flat


def original_to_wukong_state_dict(
    state: dict[str, torch.Tensor], model: WukongModel, variant: str = "custom"
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Official flat state dict -> (WukongModel state dict, report). Raises on unknown keys or wrong shapes."""
    config = model.config
    report = ConversionReport(source="state_dict", variant=variant)
    if config.text_config.model_type != "clip_text_model" or config.vision_config.model_type != "timm_wrapper":
        raise ValueError(
            f"variant {variant!r} has a {config.text_config.model_type} text tower and a "
            f"{config.vision_config.model_type} image tower; the released checkpoints need a causal clip_text_model "
            "text tower and a timm image tower: use a wukong-* preset (see `wukong presets`)."
        )
    groups: dict[str, dict[str, torch.Tensor]] = {"visual": {}, "reduction": {}, "transformer": {}}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        value = value.float()
        reduction = re.fullmatch(r"visual\.token_(?:learner|reduction)\.(.+)", key)
        if reduction:
            groups["reduction"][reduction.group(1)] = value
        elif key.startswith("visual."):
            groups["visual"][key.removeprefix("visual.")] = value
        elif key.startswith("transformer."):
            groups["transformer"][key.removeprefix("transformer.")] = value
        elif key in ("loss.logit_scale", "logit_scale"):
            out["logit_scale"] = value.reshape(())
            report.mapped[key] = "logit_scale"

    timm_model = model.vision_model.timm_model
    visual = groups["visual"]
    if "proj" in visual:  # OpenAI-CLIP ViT: proj (C, D) is x @ proj
        out["visual_projection.weight"] = visual.pop("proj").t().contiguous()
        report.mapped["visual.proj"] = "visual_projection.weight (transposed)"
        vision = _map_vit(visual, timm_model, report)
    elif "head.weight" in visual:  # Swin: head is nn.Linear(C, D) with bias
        out["visual_projection.weight"] = visual.pop("head.weight")
        report.mapped["visual.head.weight"] = "visual_projection.weight"
        head_bias = visual.pop("head.bias", None)
        vision = _map_swin(visual, timm_model, report)
        if head_bias is not None:
            _check_shape("visual.head.bias", head_bias, (config.projection_dim,), variant)
            if "norm.bias" not in vision:
                raise ValueError("Swin checkpoint has visual.head.bias but no visual.norm.bias to fold it into.")
            vision["norm.bias"] = _fold_head_bias(out["visual_projection.weight"], head_bias, vision["norm.bias"])
            report.mapped["visual.head.bias"] = "folded into vision_model.timm_model.norm.bias (exact)"
            report.notes.append("Swin head bias b folded into the final LayerNorm bias: beta' = beta + pinv(W) b.")
    else:
        raise ValueError("the checkpoint has no visual.proj (ViT) or visual.head.weight (Swin): not a Wukong checkpoint.")
    out.update({f"vision_model.timm_model.{k}": v for k, v in vision.items()})

    if groups["reduction"]:
        if model.token_reduction is None:
            raise ValueError(
                f"the checkpoint has token reduction weights (visual.token_learner.*) but variant {variant!r} has no "
                "token reduction; choose the matching Wukong variant (e.g. wukong-vit-b-32, wukong-vit-l-14)."
            )
        for key, value in groups["reduction"].items():
            out[f"token_reduction.{key}"] = value
            report.mapped[f"visual.token_learner.{key}"] = f"token_reduction.{key}"
    out.update(_map_text(groups["transformer"], report))

    expected = model.state_dict()
    unknown = sorted(k for k in state if k not in report.mapped and k not in report.skipped)
    if unknown:
        raise ValueError(
            f"{len(unknown)} checkpoint keys have no place in variant {variant!r}: {', '.join(unknown[:8])}"
            f"{' ...' if len(unknown) > 8 else ''}. The checkpoint is not of this variant (see `wukong presets`)."
        )
    unexpected = sorted(k for k in out if k not in expected)
    if unexpected:
        raise ValueError(
            f"the checkpoint maps to keys variant {variant!r} lacks: {', '.join(unexpected[:8])}; it belongs to "
            "another architecture (choose the matching --variant)."
        )
    missing = sorted(k for k in expected if k not in out)
    if "logit_scale" in missing:
        missing.remove("logit_scale")
        out["logit_scale"] = expected["logit_scale"].clone()
        report.notes.append("checkpoint has no loss.logit_scale: kept the config's initial value.")
    if missing:
        raise ValueError(
            f"the checkpoint lacks {len(missing)} weights variant {variant!r} needs: {', '.join(missing[:8])}"
            f"{' ...' if len(missing) > 8 else ''}. It is incomplete or of another variant."
        )
    for key, value in out.items():
        _check_shape(key, value, expected[key].shape, variant)
    return out, report


def _vocab_for(checkpoint: Path, vocab: str | Path | None) -> Path | None:
    if vocab is not None:
        return Path(vocab)
    beside = checkpoint.parent / "vocab.txt"
    return beside if beside.is_file() else None


def load_variant_config(source: str | Path) -> WukongConfig:
    """A WukongConfig from a config JSON file or a saved model/config folder (for layouts we did not bundle)."""
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json; pass a WukongConfig JSON file or a saved model folder.")
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"config {path} does not exist; pass a WukongConfig JSON file or a saved model folder.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"config {path} is not valid JSON ({err}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must hold a JSON object of WukongConfig fields.")
    data.pop("description", None)
    if data.get("model_type", "wukong") != "wukong":
        raise ValueError(f"config {path} has model_type {data['model_type']!r}; a Wukong config has 'wukong'.")
    for key in ("model_type", "transformers_version", "architectures", "auto_map", "dtype", "torch_dtype"):
        data.pop(key, None)
    try:
        return WukongConfig(**data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config {path}: {err}") from None


def convert_original_checkpoint(
    checkpoint: str | Path,
    variant: str | WukongConfig,
    out_dir: str | Path,
    *,
    vocab: str | Path | None = None,
    scoring_rule: str | None = "official",
) -> ConversionReport:
    """Convert one released checkpoint file into a WukongModel + WukongProcessor folder.

    Args:
        checkpoint: PyTorch file (flat / "state_dict" / "module.") or pickle of numpy arrays.
        variant: preset name (e.g. "wukong-vit-b-32") or a WukongConfig (see load_variant_config).
        out_dir: folder to write (model.safetensors, config.json, processor files, conversion_report.json).
        vocab: vocab.txt for the tokenizer; default: vocab.txt beside the checkpoint, else the bundled one.
        scoring_rule: "official" (default: score exactly as the released evaluation code), "paper", or
            None to keep the config's own token_wise_padding / zero_shot_ensemble.

    Returns:
        The ConversionReport (also written to out_dir/conversion_report.json).
    """
    checkpoint = Path(checkpoint)
    state = load_state_dict_file(checkpoint)
    name = variant if isinstance(variant, str) else "custom"
    config = preset_config(variant) if isinstance(variant, str) else copy.deepcopy(variant)
    if scoring_rule is not None:
        config.use_scoring_rule(scoring_rule)
    model = WukongModel(config).eval()
    try:
        converted, report = original_to_wukong_state_dict(state, model, name)
    except ValueError as err:
        raise ValueError(f"{checkpoint}: {err}") from None
    report.source = str(checkpoint)
    report.notes.append(
        f"scores by the {scoring_rule or 'config'} rules: token_wise_padding={config.token_wise_padding!r}, "
        f"zero-shot ensemble {config.ensemble_method!r} (switch with `wukong convert set-rule`)."
    )
    model.load_state_dict(converted, strict=True)
    processor = WukongProcessor.from_config(config, vocab_path=_vocab_for(checkpoint, vocab))  # fails before writing
    out_dir = Path(out_dir)
    save_model_folder(out_dir, model, processor, {"conversion_report.json": report.to_json()})
    return report
