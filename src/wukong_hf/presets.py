"""Named configurations of the paper's and the released Wukong variants (files in modeling/)."""

from __future__ import annotations

import json
from importlib import resources

from .configuration_wukong import WukongConfig

__all__ = ["list_presets", "preset_config", "preset_description"]


def _preset_files() -> dict[str, object]:
    folder = resources.files("wukong_hf.preset_files")
    return {f.name[: -len(".json")]: f for f in folder.iterdir() if f.name.endswith(".json")}


def list_presets() -> list[str]:
    """Names of every bundled preset, sorted."""
    return sorted(_preset_files())


def _load(name: str) -> dict:
    files = _preset_files()
    if name not in files:
        raise ValueError(f"Unknown preset {name!r}. Available presets: {', '.join(sorted(files))}.")
    return json.loads(files[name].read_text(encoding="utf-8"))


def preset_description(name: str) -> str:
    return _load(name).get("description", "")


def preset_config(name: str, **overrides) -> WukongConfig:
    """WukongConfig of a preset, with top-level fields overridden (e.g. similarity="global")."""
    data = _load(name)
    data.pop("description", None)
    data.update(overrides)
    return WukongConfig(**data)
