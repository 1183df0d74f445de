"""Export a WukongModel folder for the Hub (safetensors, config with auto_map, remote code, processor,
model card with model-index) and push it.

Evaluation results come from JSON files with a top-level "model_index" list of entries
{"task_type", "task_name", "dataset_name", "dataset_type", "dataset_split", "metric_type",
"metric_name", "metric_value", "source": "measured"} (huggingface_hub.EvalResult fields). The
paper's / official release's ImageNet-CN numbers are added for the released variants, labelled as
reported.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
import tempfile
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .modeling_wukong import WukongModel
from .processing_wukong import WukongProcessor

__all__ = [
    "REPORTED_IMAGENET_CN",
    "reported_eval_results",
    "measured_eval_results",
    "build_model_card",
    "export_model_folder",
    "push_model",
]

PAPER_URL = "https://arxiv.org/abs/2202.06767"
REPORTED_SOURCE = "reported by Gu et al. 2022 / official Wukong release (not measured here)"
MEASURED_SOURCE = "measured with wukong-hf"
# Official ImageNet-CN zero-shot top-1 (single prompt, 80-prompt ensemble) as the release reports
# them (mindspore-ai/models research/mm/wukong README; docs/wukong-facts.md). The "token-wise" numbers
# usually quoted (45.22 / 48.24 and 50.22 / 54.43) are the token-reduced "Wukong" checkpoints.
REPORTED_IMAGENET_CN = {
    "wukong-vit-b-32-global": (44.68, 47.32),
    "wukong-vit-b-32-filip": (32.53, 37.17),
    "wukong-vit-b-32": (45.22, 48.24),
    "wukong-vit-l-14-global": (56.15, 57.54),
    "wukong-vit-l-14-filip": (49.74, 52.83),
    "wukong-vit-l-14": (50.22, 54.43),
}
_ENTRY_FIELDS = (
    "task_type", "task_name", "dataset_name", "dataset_type", "dataset_split", "metric_type", "metric_name",
    "metric_value",
)
DEFAULT_TEMPLATE = "wukong-custom"


def _default_template_dir() -> Path:
    # model_cards/ is packaged as wukong_hf.model_card_templates (pyproject package-dir), a plain folder on disk.
    return Path(str(resources.files("wukong_hf.model_card_templates")))


def reported_eval_results(variant: str | None) -> list[EvalResult]:
    """The paper's / official release's ImageNet-CN top-1 for a released variant, labelled as reported."""
    if variant not in REPORTED_IMAGENET_CN:
        return []
    single, ensemble = REPORTED_IMAGENET_CN[variant]
    return [
        EvalResult(
            task_type="zero-shot-image-classification",
            task_name="Zero-shot image classification (Chinese prompts)",
            dataset_type="imagenet-1k",
            dataset_name="ImageNet-CN (ImageNet-1k validation, Chinese class names)",
            dataset_split="validation",
            metric_type="accuracy",
            metric_name=name,
            metric_value=value,
            source_name=REPORTED_SOURCE,
            source_url=PAPER_URL,
        )
        for name, value in (("top-1, single prompt", single), ("top-1, 80-prompt ensemble", ensemble))
    ]


def measured_eval_results(results_files: tuple | list, repo_id: str) -> list[EvalResult]:
    """EvalResults from evaluation JSON files (top-level "model_index" list), labelled as measured.

    The source URL (required by the model-index format) is the model's own Hub page.
    """
    source_url = f"https://huggingface.co/{repo_id}"
    results = []
    for path in map(Path, results_files):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"results file {path} does not exist.") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"results file {path} is not valid JSON ({err}).") from None
        entries = data.get("model_index") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ValueError(
                f"results file {path} has no top-level 'model_index' list; write it with the evaluation commands "
                "(`wukong eval ...`), which produce one entry per metric."
            )
        for n, entry in enumerate(entries):
            missing = [f for f in _ENTRY_FIELDS if not isinstance(entry, dict) or f not in entry]
            if missing:
                raise ValueError(f"results file {path}: model_index[{n}] lacks {', '.join(missing)}.")
            if entry.get("source", "measured") != "measured":
                raise ValueError(
                    f"results file {path}: model_index[{n}] has source {entry['source']!r}; results files carry "
                    "measured numbers only (reported numbers are added from the paper by the exporter)."
                )
            results.append(EvalResult(**{f: entry[f] for f in _ENTRY_FIELDS}, source_name=MEASURED_SOURCE, source_url=source_url))
    return results


def _results_table(results: list[EvalResult]) -> str:
    if not results:
        return "_None yet._"
    rows = ["| Dataset | Split | Metric | Value | Source |", "|---|---|---|---:|---|"]
    rows += [
        f"| {r.dataset_name} | {r.dataset_split} | {r.metric_name or r.metric_type} | {r.metric_value} | {r.source_name} |"
        for r in results
    ]
    return "\n".join(rows)


def build_model_card(
    repo_id: str,
    variant: str | None = None,
    results_files: tuple | list = (),
    *,
    license: str = "apache-2.0",
    base_model: str | None = None,
    datasets: tuple | list = ("wukong",),
    template_dir: str | Path | None = None,
) -> ModelCard:
    """Model card from the variant's template in model_cards/ (fallback: the custom-model template).

    Metadata: language zh, license, pipeline_tag zero-shot-image-classification, datasets, base_model,
    tags, library_name transformers, model-index = reported (released variants) + measured results.
    """
    import jinja2

    template_dir = Path(template_dir) if template_dir else _default_template_dir()
    name = variant if variant and (template_dir / f"{variant}.md").is_file() else DEFAULT_TEMPLATE
    if not (template_dir / f"{name}.md").is_file():
        raise FileNotFoundError(f"no model card template {name}.md in {template_dir}; pass template_dir.")
    reported, measured = reported_eval_results(variant), measured_eval_results(results_files, repo_id)
    card_data = ModelCardData(
        language="zh",
        license=license,
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        datasets=list(datasets),
        base_model=base_model,
        tags=["wukong", "chinese", "clip", "vision-language", "zero-shot-image-classification", "custom_code"],
        model_name=repo_id.split("/")[-1],
        eval_results=(reported + measured) or None,
    )
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir)), keep_trailing_newline=True)
    body = environment.get_template(f"{name}.md").render(
        repo_id=repo_id,
        reported_table=_results_table(reported),
        measured_table=_results_table(measured),
    )
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


def _conversion_info(model_dir: Path) -> dict:
    path = model_dir / "conversion_report.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def export_model_folder(
    model_dir: str | Path,
    out_dir: str | Path,
    results_files: tuple | list = (),
    *,
    repo_id: str | None = None,
    variant: str | None = None,
    license: str = "apache-2.0",
    base_model: str | None = None,
    template_dir: str | Path | None = None,
) -> Path:
    """Write exactly what goes to the Hub: model.safetensors, config.json (auto_map), the remote-code
    files, processor files, README.md (model card) and conversion_report.json when the model was converted.

    Args:
        model_dir: a folder saved by WukongModel/WukongProcessor (e.g. `wukong convert ...` or training).
        out_dir: the export folder (created; must be empty or absent).
        results_files: evaluation JSON files with a "model_index" list.
        variant: released variant name for the card template and reported numbers; default: the one
            recorded by the converter, else a custom-model card.

    Returns:
        out_dir as a Path.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json: not a saved WukongModel folder.")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"export folder {out_dir} is not empty; choose a new folder so nothing is overwritten.")
    info = _conversion_info(model_dir)
    variant = variant or info.get("variant")
    source = info.get("source", "")
    if base_model is None and source.count("/") == 1 and not Path(source).exists():
        base_model = source  # converted from a Hub model (e.g. Chinese-CLIP)
    card = build_model_card(
        repo_id or out_dir.name, variant, results_files,
        license=license, base_model=base_model, template_dir=template_dir,
    )
    model = WukongModel.from_pretrained(model_dir)
    processor = WukongProcessor.from_pretrained(model_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    card.save(out_dir / "README.md")
    if info:
        shutil.copy(model_dir / "conversion_report.json", out_dir / "conversion_report.json")
    return out_dir


def push_model(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    dry_run_dir: str | Path | None = None,
    results_files: tuple | list = (),
    token: str | None = None,
    **card_options,
) -> str:
    """Export `model_dir` and upload it to `repo_id` (HfApi.create_repo + upload_folder).

    With dry_run_dir, only writes the export folder there (exactly what would be uploaded) and returns its
    path. Otherwise returns the URL of the commit. card_options go to export_model_folder (variant,
    license, base_model, template_dir).
    """
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo id {repo_id!r} must look like 'org/name'.")
    if dry_run_dir is not None:
        return str(export_model_folder(model_dir, dry_run_dir, results_files, repo_id=repo_id, **card_options))
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_model_folder(model_dir, Path(tmp) / "export", results_files, repo_id=repo_id, **card_options)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message="Upload Wukong model (wukong-hf)"
        )
    return str(getattr(commit, "commit_url", commit))
