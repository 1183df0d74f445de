"""Chinese class names and prompt templates for zero-shot classification.

ImageNet-1k names and the 80 Chinese templates come from the clip-benchmark package
(clip_benchmark/datasets/cn_classnames.json and cn_zeroshot_classification_templates.json,
MIT licence), installed by the [eval] extra. Any other dataset: a label file, one name per line.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

__all__ = ["load_classnames", "load_templates", "fill_template", "BUILTIN_CLASSNAMES", "BUILTIN_TEMPLATES"]

BUILTIN_CLASSNAMES = ("imagenet1k",)
BUILTIN_TEMPLATES = ("imagenet1k", "none")

_INSTALL_HINT = "install the [eval] extra (pip install 'wukong-hf[eval]', which brings clip-benchmark) or pass a file"


def _clip_benchmark_json(filename: str) -> dict:
    try:
        folder = resources.files("clip_benchmark.datasets")
    except ModuleNotFoundError as err:
        raise ValueError(f"The built-in Chinese names need the clip-benchmark package: {_INSTALL_HINT}.") from err
    return json.loads((folder / filename).read_text(encoding="utf-8"))


def _read_lines(path: str | Path, what: str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist; give a UTF-8 text file with one entry per line.")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} file {path} is not UTF-8 ({err}); save it as UTF-8, one entry per line.") from err
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{what} file {path} has no entries; put one per line.")
    return lines


def load_classnames(source: str | Path) -> list[str]:
    """Class names in label order: "imagenet1k" (Chinese ImageNet-1k names) or a file, one name per line."""
    if str(source) in BUILTIN_CLASSNAMES:
        return list(_clip_benchmark_json("cn_classnames.json")[str(source)])
    names = _read_lines(source, "Class-name")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"Class-name file {source} repeats {duplicates[:5]}; each class needs a distinct name.")
    return names


def load_templates(source: str | Path) -> list[str]:
    """Prompt templates with a "{c}" (or "{}") slot for the class name.

    "imagenet1k": the 80 Chinese templates; "none": the bare class name only (the official
    single-prompt setting); otherwise a file with one template per line.
    """
    if str(source) == "none":
        return ["{c}"]
    if str(source) in BUILTIN_TEMPLATES:
        templates = list(_clip_benchmark_json("cn_zeroshot_classification_templates.json")[str(source)])
    else:
        templates = _read_lines(source, "Template")
    templates = [t.replace("{}", "{c}") for t in templates]
    missing = [t for t in templates if "{c}" not in t]
    if missing:
        raise ValueError(
            f"Template(s) {missing[:3]} have no class-name slot; write {{c}} (or {{}}) where the class name goes."
        )
    return templates


def fill_template(template: str, classname: str) -> str:
    """The prompt for one class: template with its {c} slot replaced by the class name."""
    return template.replace("{c}", classname)
