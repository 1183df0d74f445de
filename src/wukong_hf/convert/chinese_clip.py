"""transformers ChineseCLIPModel -> WukongModel in the global form (same logits).

Chinese-CLIP's text tower is BERT pooled at [CLS], its image tower is CLIP's ViT (post-LayerNorm
on [CLS]); both projections have no bias. The module names of ChineseCLIPModel and WukongModel
(BertModel without pooler + CLIPVisionModel) coincide, so the weights copy one-to-one.
"""

from __future__ import annotations

from pathlib import Path

from transformers import BertConfig, ChineseCLIPModel, CLIPVisionConfig

from ..configuration_wukong import WukongConfig
from ..model_folders import save_model_folder
from ..modeling_wukong import WukongModel
from ..processing_wukong import WukongProcessor, build_chinese_tokenizer
from .original import ConversionReport

__all__ = ["chinese_clip_config_to_wukong", "chinese_clip_to_wukong", "convert_chinese_clip"]

# Chinese-CLIP tokenises to 52 tokens (its context length); its text tower has 512 positions.
CHINESE_CLIP_CONTEXT_LENGTH = 52
# Fields of ChineseCLIP's sub-configs that belong to the model type, not to the architecture.
_NON_ARCH_FIELDS = ("model_type", "transformers_version", "architectures", "projection_dim")


def chinese_clip_config_to_wukong(config) -> WukongConfig:
    """ChineseCLIPConfig -> WukongConfig (text bert, vision clip_vision_model, global, text pooled at [CLS])."""
    text = {k: v for k, v in config.text_config.to_dict().items() if k not in _NON_ARCH_FIELDS}
    vision = {k: v for k, v in config.vision_config.to_dict().items() if k not in _NON_ARCH_FIELDS}
    return WukongConfig(
        text_config=BertConfig(**text),
        vision_config=CLIPVisionConfig(**vision),
        projection_dim=config.projection_dim,
        similarity="global",
        image_pooling="cls",
        text_pooling="cls",
        image_size=config.vision_config.image_size,
        logit_scale_init_value=config.logit_scale_init_value,
    )


def chinese_clip_to_wukong(source: ChineseCLIPModel) -> tuple[WukongModel, ConversionReport]:
    """A loaded ChineseCLIPModel -> (WukongModel with the same weights, report)."""
    config = chinese_clip_config_to_wukong(source.config)
    model = WukongModel(config).eval()
    state = source.state_dict()
    expected = model.state_dict()
    report = ConversionReport(source=type(source).__name__, variant="chinese-clip (global)")
    for key, value in state.items():
        if key not in expected:
            report.skipped[key] = "no counterpart in WukongModel"
        elif tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"ChineseCLIP weight {key} has shape {tuple(value.shape)}, WukongModel expects "
                             f"{tuple(expected[key].shape)}; the configs disagree.")
        else:
            report.mapped[key] = key
    if report.skipped:
        raise ValueError(f"ChineseCLIP weights without a place in WukongModel: {', '.join(sorted(report.skipped))}.")
    model.load_state_dict(state, strict=True)
    report.notes.append("logit_scale is clamped at 100 in WukongModel (ChineseCLIP does not clamp).")
    return model, report


def _vocab_file(model: str | Path) -> Path | None:
    """vocab.txt of the source (local folder, else the Hub snapshot); None: use the bundled one."""
    local = Path(model)
    if local.is_dir():
        return local / "vocab.txt" if (local / "vocab.txt").is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(str(model), "vocab.txt"))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None


def _source_image_processor(model: str | Path, report: ConversionReport):
    """The source's own image processor (its resize/crop settings), or None when it has none."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(model))
    except (OSError, ValueError) as err:
        report.notes.append(f"no image processor beside the source ({str(err).splitlines()[0][:120]}): "
                            "using the released Wukong preprocessing (resize short side, centre crop).")
        return None


def convert_chinese_clip(model: str | Path, out_dir: str | Path) -> ConversionReport:
    """Convert a ChineseCLIPModel (local folder or Hub id) into a WukongModel + WukongProcessor folder.

    The source's image processor is kept as it is (OFA-Sys configs squash images to 224x224
    without a centre crop), so converted models see exactly the pixels Chinese-CLIP sees.

    Returns the ConversionReport (also written to out_dir/conversion_report.json).
    """
    try:
        source = ChineseCLIPModel.from_pretrained(str(model)).eval()
    except OSError as err:  # transformers' "not a folder / not a Hub id / offline" errors
        raise FileNotFoundError(f"cannot load a ChineseCLIPModel from {model}: {str(err).splitlines()[0]}") from None
    wukong, report = chinese_clip_to_wukong(source)
    report.source = str(model)
    vocab = _vocab_file(model)
    if vocab is None:
        report.notes.append("no vocab.txt beside the source: using the bundled BERT-Chinese vocabulary.")
    max_length = min(CHINESE_CLIP_CONTEXT_LENGTH, wukong.config.max_text_length)
    image_processor = _source_image_processor(model, report)
    if image_processor is None:
        processor = WukongProcessor.from_defaults(wukong.config.image_size, max_length, vocab)
    else:
        processor = WukongProcessor(image_processor, build_chinese_tokenizer(vocab, max_length))
    out_dir = Path(out_dir)
    save_model_folder(out_dir, wukong, processor, {"conversion_report.json": report.to_json()})
    return report
