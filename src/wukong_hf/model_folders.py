"""Model folders: the one loader ("model folder, Hub id or preset" -> model + processor) and the one
exporter (model + processor + reports -> folder) that every command and library entry point uses.

A model folder is what `save_pretrained` writes: model.safetensors, config.json (with an auto_map for
remote code), the remote-code .py files, the processor files, plus optional reports
(conversion_report.json, validation_results.json, README.md model card).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from .configuration_wukong import WukongConfig

__all__ = ["NotAWukongModel", "load_model_config", "load_model_and_processor", "save_model_folder"]


class NotAWukongModel(ValueError):
    """A model folder or Hub id whose config.json names another model type; `model_type` holds it
    (callers that word the error their own way, like the Space, read it)."""

    def __init__(self, message: str, model_type: str | None):
        super().__init__(message)
        self.model_type = model_type


def _looks_like_a_local_path(name: str) -> bool:
    """True when `name` can only be meant as a folder on disk (a Hub id is "name" or "org/name")."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.endswith(("/", os.sep))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def _check_source(name_or_path: str) -> None:
    """Fail early, naming the path, for a source that cannot be a model folder or a Hub id."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model folder {name_or_path} has no config.json: it is not a saved model; pass a folder written by "
                "save_pretrained (training's final/, `wukong convert ... --out DIR`) or a Hub id such as org/name."
            )
    elif path.exists():
        raise ValueError(f"{name_or_path} is a file; pass the model folder that holds config.json, or a Hub id.")
    elif _looks_like_a_local_path(name_or_path):
        raise FileNotFoundError(
            f"model folder {name_or_path} does not exist; pass a folder written by save_pretrained or a Hub id "
            "such as org/name."
        )


def _note_source(err: BaseException, name_or_path: str) -> None:
    # The command line's error handler prefixes its one-line message with this note.
    err.add_note(f"model {name_or_path}")


def load_model_config(name_or_path: str | None = None, preset: str | None = None) -> WukongConfig:
    """The WukongConfig of a model folder / Hub id (when given) or of a bundled preset.

    Raises FileNotFoundError / ValueError naming the source when it is not a Wukong model folder, and
    lets transformers' / huggingface_hub's errors (offline, not on the Hub, HTTP) through with the source
    attached as a note.
    """
    if name_or_path:
        name_or_path = str(name_or_path)
        _check_source(name_or_path)
        try:
            model_type = WukongConfig.get_config_dict(name_or_path)[0].get("model_type")
        except Exception as err:
            _note_source(err, name_or_path)
            raise
        if model_type != WukongConfig.model_type:
            hint = (
                f"convert it first: wukong convert chinese-clip --model {name_or_path} --out DIR"
                if model_type == "chinese_clip"
                else "pass a Wukong model folder (`wukong convert --help` lists the checkpoints it converts)"
            )
            raise NotAWukongModel(f"{name_or_path} holds a {model_type!r} model, not a Wukong model; {hint}.", model_type)
        try:
            return WukongConfig.from_pretrained(name_or_path)
        except Exception as err:
            _note_source(err, name_or_path)
            raise
    if preset:
        from .presets import preset_config

        return preset_config(preset)
    raise ValueError("no model given: pass a model folder, a Hub id or a preset name.")


def load_model_and_processor(
    name_or_path: str | None = None, preset: str | None = None, *, config: WukongConfig | None = None
):
    """(WukongModel in eval mode, WukongProcessor) from a model folder / Hub id, else a randomly
    initialised preset (smoke runs).

    Args:
        name_or_path: a folder written by save_pretrained or a Hub id (cached, or downloaded unless
            HF_HUB_OFFLINE=1); takes precedence over `preset`.
        preset: a bundled preset name (see `wukong presets`), used when name_or_path is empty.
        config: the config to build the model with (e.g. load_model_config(...) with edits); default:
            the folder's or the preset's own.
    """
    from .modeling_wukong import WukongModel
    from .processing_wukong import WukongProcessor

    config = config if config is not None else load_model_config(name_or_path, preset)
    if not name_or_path:
        return WukongModel(config).eval(), WukongProcessor.from_config(config)
    folder = Path(name_or_path).expanduser()
    if folder.is_dir() and not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        raise FileNotFoundError(
            f"model folder {name_or_path} has no tokenizer (tokenizer.json): save the processor beside the model, "
            f"e.g. WukongProcessor.from_config(model.config).save_pretrained({str(name_or_path)!r})."
        )
    try:
        model = WukongModel.from_pretrained(str(name_or_path), config=config)
        processor = WukongProcessor.from_pretrained(str(name_or_path))
    except Exception as err:
        _note_source(err, name_or_path)
        raise
    return model.eval(), processor


def save_model_folder(
    folder: str | Path, model, processor, reports: Mapping[str, object] | None = None
) -> Path:
    """Write model + processor + reports to `folder` (created) and return it as a Path.

    model.safetensors, config.json (auto_map for AutoConfig, AutoModel and
    AutoModelForZeroShotImageClassification: remote code and the pipeline work without wukong_hf; see
    WukongModel.save_pretrained), the remote-code files, the processor files, then one file per report:
    a dict is written as JSON, a str as text (e.g. {"conversion_report.json": report.to_json()}).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    for name, content in (reports or {}).items():
        text = content if isinstance(content, str) else json.dumps(content, indent=2, ensure_ascii=False)
        (folder / name).write_text(text, encoding="utf-8")
    return folder
