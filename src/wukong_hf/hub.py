"""Export a WukongModel folder for the Hub (safetensors, config with auto_map, remote code, processor,
model card with model-index) and push it.

Evaluation results come from JSON files with a top-level "model_index" list of entries
{"task_type", "task_name", "dataset_name", "dataset_type", "dataset_split", "metric_type",
"metric_name", "metric_value", optional "metric_args" / "dataset_config" / "dataset_revision",
"source": "measured"} (huggingface_hub.EvalResult fields), written by `wukong eval` and by
training's validation (wukong_hf.evaluation.report.model_index_entries). The paper's / official
release's ImageNet-CN numbers are added for the released variants, labelled as reported.
`push_eval_results` appends measured entries to a model's card on the Hub (or writes the updated
card locally as a dry run).
"""

from __future__ import annotations

import json
from importlib import resources
import tempfile
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RemoteEntryNotFoundError, RepositoryNotFoundError

from .model_folders import load_model_and_processor, save_model_folder

__all__ = [
    "REPORTED_IMAGENET_CN",
    "reported_eval_results",
    "measured_eval_results",
    "build_model_card",
    "export_model_folder",
    "push_model",
    "merge_eval_results",
    "push_eval_results",
    "TRAINING_DATASETS",
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
_OPTIONAL_ENTRY_FIELDS = ("metric_args", "dataset_config", "dataset_revision")
DEFAULT_TEMPLATE = "wukong-custom"
# The released checkpoints were trained on Wukong; its URL/caption list is on the Hub as a community
# mirror (the official release is not on the Hub). Custom models name no training data by default.
TRAINING_DATASETS = ["wanng/wukong100m"]


def _valid_repo_id(repo_id: str) -> str:
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo id {repo_id!r} must look like 'org/name'.")
    return repo_id


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
            task_name="Zero-shot image classification",
            dataset_type="ILSVRC/imagenet-1k",
            dataset_name="ImageNet-CN (ImageNet-1k validation, Chinese class names)",
            dataset_split="validation",
            metric_type="accuracy",
            metric_name=name,
            metric_value=value,
            metric_args={"k": 1},
            source_name=REPORTED_SOURCE,
            source_url=PAPER_URL,
        )
        for name, value in (("top-1 accuracy (class name only)", single), ("top-1 accuracy (80 templates)", ensemble))
    ]


def _measured(entries: list, origin: str, repo_id: str) -> list[EvalResult]:
    """EvalResults from model_index entries (see the module docstring), labelled as measured."""
    results = []
    for n, entry in enumerate(entries):
        missing = [f for f in _ENTRY_FIELDS if not isinstance(entry, dict) or f not in entry]
        if missing:
            raise ValueError(f"{origin}: model_index[{n}] lacks {', '.join(missing)}.")
        if entry.get("source", "measured") != "measured":
            raise ValueError(
                f"{origin}: model_index[{n}] has source {entry['source']!r}; results files carry "
                "measured numbers only (reported numbers are added from the paper by the exporter)."
            )
        fields = {f: entry[f] for f in (*_ENTRY_FIELDS, *_OPTIONAL_ENTRY_FIELDS) if entry.get(f) is not None}
        # The source URL (required by the model-index format with a source name) is the model's own Hub page.
        results.append(EvalResult(**fields, source_name=MEASURED_SOURCE, source_url=f"https://huggingface.co/{repo_id}"))
    return results


def measured_eval_results(results_files: tuple | list, repo_id: str) -> list[EvalResult]:
    """EvalResults from evaluation JSON files (top-level "model_index" list), labelled as measured."""
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
        results += _measured(entries, f"results file {path}", repo_id)
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
    datasets: tuple | list | None = None,
    template_dir: str | Path | None = None,
) -> ModelCard:
    """Model card from the variant's template in model_cards/ (fallback: the custom-model template).

    Metadata: language zh, license, pipeline_tag zero-shot-image-classification, datasets (Hub ids
    of the training data; default TRAINING_DATASETS for a released variant's template, none for a
    custom model), base_model, tags, library_name transformers, model-index = reported (released
    variants) + measured results.
    """
    import jinja2

    template_dir = Path(template_dir) if template_dir else _default_template_dir()
    name = variant if variant and (template_dir / f"{variant}.md").is_file() else DEFAULT_TEMPLATE
    if not (template_dir / f"{name}.md").is_file():
        raise FileNotFoundError(f"no model card template {name}.md in {template_dir}; pass template_dir.")
    reported, measured = reported_eval_results(variant), measured_eval_results(results_files, repo_id)
    if datasets is None:
        datasets = TRAINING_DATASETS if name != DEFAULT_TEMPLATE else []
    card_data = ModelCardData(
        language="zh",
        license=license,
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        datasets=list(datasets) or None,
        base_model=base_model,
        tags=["wukong", "chinese", "clip", "vision-language", "zero-shot-image-classification", "custom_code"],
        model_name=repo_id.split("/")[-1],
        eval_results=(_without_superseded(reported, measured) + measured) or None,
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
    model, processor = load_model_and_processor(model_dir)
    reports = {"README.md": str(card)}
    if info:
        reports["conversion_report.json"] = (model_dir / "conversion_report.json").read_text(encoding="utf-8")
    save_model_folder(out_dir, model, processor, reports)
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
    _valid_repo_id(repo_id)
    if dry_run_dir is not None:
        return str(export_model_folder(model_dir, dry_run_dir, results_files, repo_id=repo_id, **card_options))
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_model_folder(model_dir, Path(tmp) / "export", results_files, repo_id=repo_id, **card_options)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            commit = api.upload_folder(
                folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message="Upload Wukong model (wukong-hf)"
            )
        except Exception as err:
            err.add_note(f"upload to the Hub repository {repo_id}")  # the command line's one-line message names it
            raise
    return str(getattr(commit, "commit_url", commit))


def _without_superseded(reported: list[EvalResult], measured: list[EvalResult]) -> list[EvalResult]:
    # huggingface_hub writes one model-index block per EvalResult.unique_identifier (task, dataset,
    # config, split, revision), labelled with its first result's source: a reported entry beside a
    # measured one of the same identifier would label the measured numbers "reported". Measured
    # entries win the model-index; the reported numbers stay in the card's text.
    measured_ids = {r.unique_identifier for r in measured}
    return [r for r in reported if r.unique_identifier not in measured_ids]


def merge_eval_results(card: ModelCard, new_results: list[EvalResult]) -> tuple[int, int]:
    """Add EvalResults to a card's model-index; a result that differs from an existing one only in
    value (huggingface_hub's EvalResult.is_equal_except_value) replaces its value.

    One model-index block holds one source: the paper's reported entries of the same task, dataset
    and split leave the model-index (they stay in the card's text); another named source there is
    an error rather than a mislabelled block.

    Returns (added, replaced) counts.
    """
    new_ids = {r.unique_identifier for r in new_results}
    existing = []
    for old in card.data.eval_results or []:
        if old.unique_identifier in new_ids and old.source_name not in (None, MEASURED_SOURCE):
            if old.source_name != REPORTED_SOURCE:
                raise ValueError(
                    f"the card already has {old.task_type} results on {old.dataset_type} ({old.dataset_split}) from "
                    f"{old.source_name!r}; a model-index block holds one source, so edit the card by hand to add these."
                )
            continue
        existing.append(old)
    added = replaced = 0
    for result in new_results:
        same = next((old for old in existing if result.is_equal_except_value(old)), None)
        if same is None:
            existing.append(result)
            added += 1
        else:
            replaced += same.metric_value != result.metric_value
            same.metric_value = result.metric_value
    card.data.eval_results = existing
    return added, replaced


def _load_card(repo_id: str, token: str | None) -> ModelCard:
    # Order matters: LocalEntryNotFoundError and RemoteEntryNotFoundError are both EntryNotFoundErrors.
    try:
        return ModelCard.load(repo_id, token=token)
    except LocalEntryNotFoundError:
        raise ValueError(f"cannot read the model card of {repo_id}: offline and not in the Hub cache; connect, or "
                         f"download it once (`hf download {repo_id} README.md`).") from None
    except RepositoryNotFoundError:
        raise ValueError(f"no model repository {repo_id} on the Hub (or no access to it); check the id and your login "
                         "(`hf auth login`).") from None
    except RemoteEntryNotFoundError:  # the repo has no README.md yet: start from an empty card
        return ModelCard(f"---\n{ModelCardData().to_yaml()}\n---\n")
    except (HfHubHTTPError, ConnectionError) as err:
        raise ValueError(f"cannot read the model card of {repo_id}: {str(err).splitlines()[0]}") from None


def push_eval_results(
    repo_id: str,
    results_files: tuple | list = (),
    entries: tuple | list = (),
    *,
    dry_run_dir: str | Path | None = None,
    token: str | None = None,
) -> str:
    """Append measured results to the model card of `repo_id` on the Hub.

    Args:
        repo_id: the model repository ("org/name"); its current README.md is read from the Hub
            (or the Hub cache when offline).
        results_files: JSON files with a "model_index" list (written by `wukong eval`).
        entries: model_index entries given directly (e.g. from the evaluation just run).
        dry_run_dir: write the updated README.md there instead of uploading.

    Returns:
        The path of the written card (dry run) or the URL of the Hub commit.
    """
    _valid_repo_id(repo_id)
    new_results = measured_eval_results(results_files, repo_id) + _measured(list(entries), "evaluation result", repo_id)
    if not new_results:
        raise ValueError("no results to push: give a results file written by `wukong eval`.")
    card = _load_card(repo_id, token)
    if card.data.model_name is None:
        card.data.model_name = repo_id.split("/")[-1]
    added, replaced = merge_eval_results(card, new_results)
    card = ModelCard(str(card))  # re-parse: the card written is the card huggingface_hub reads back
    message = f"Add evaluation results (wukong-hf): {added} new, {replaced} updated"
    if dry_run_dir is not None:
        path = Path(dry_run_dir) / "README.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        card.save(path)
        return str(path)
    commit = card.push_to_hub(repo_id, token=token, commit_message=message)
    return str(getattr(commit, "commit_url", commit))
