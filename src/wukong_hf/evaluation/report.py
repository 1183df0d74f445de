"""Evaluation reports: JSON with a "model_index" list for the Hub card, and Markdown tables laid
out like the paper's Table 5 (zero-shot top-1, one column per dataset) and Table 6 (retrieval).
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["model_index_entry", "model_index_entries", "zero_shot_table", "retrieval_table", "write_report"]


def model_index_entry(
    task_type: str, task_name: str, dataset: str, split: str, metric: str, value: float, metric_type: str | None = None
) -> dict:
    """One measured result in the field names of huggingface_hub.EvalResult, read by the Hub card code.

    metric_type: defaults to a slug of the metric name.
    """
    return {
        "task_type": task_type,
        "task_name": task_name,
        "dataset_name": dataset,
        "dataset_type": dataset,
        "dataset_split": split,
        "metric_type": metric_type or metric.lower().replace("@", "_at_").replace(" ", "_"),
        "metric_name": metric,
        "metric_value": round(float(value), 4),
        "source": "measured",
    }


def model_index_entries(result: dict) -> list[dict]:
    """EvalResult-shaped entries of one zero-shot or retrieval result (see the module docstring)."""
    entries = []
    if result["task"] == "zero-shot-classification":
        task = ("zero-shot-image-classification", "Zero-shot image classification")
        for setting in ("single_prompt", "ensemble"):
            metrics = result.get(setting)
            if not metrics:
                continue
            label = "single prompt" if setting == "single_prompt" else f"{result['num_templates']}-prompt ensemble"
            for key, name in (("top1", "top-1 accuracy"), ("top5", "top-5 accuracy"), ("mean_per_class_recall", "mean per-class recall")):
                entries.append(model_index_entry(*task, result["dataset"], result["split"], f"{name} ({label})", metrics[key]))
    else:
        task = ("image-text-retrieval", "Image-text retrieval")
        for key, value in result["metrics"].items():
            name = key.replace("i2t_", "image-to-text ").replace("t2i_", "text-to-image ").replace("MR", "mean recall")
            entries.append(model_index_entry(*task, result["dataset"], result["split"], name, value))
    return entries


def zero_shot_table(results: list[dict]) -> str:
    """Table 5 layout: one row per model and setting, one column per dataset, top-1 in percent."""
    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    rows: dict[str, dict[str, float]] = {}
    for r in results:
        for setting, label in (("single_prompt", "single prompt"), ("ensemble", f"ensemble ({r['ensemble_method']})")):
            if r.get(setting):
                rows.setdefault(f"{r.get('model', 'model')} {label}", {})[r["dataset"]] = r[setting]["top1"]
    lines = ["| Model | " + " | ".join(datasets) + " |", "|---|" + "---:|" * len(datasets)]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[d]:.2f}" if d in values else "-" for d in datasets) + " |")
    return "\n".join(lines) + "\n"


def retrieval_table(results: list[dict]) -> str:
    """Table 6 layout: per model and dataset, image-to-text R@1/5/10, text-to-image R@1/5/10, MR."""
    keys = [f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)] + ["MR"]
    lines = [
        "| Dataset | Model | Image-to-Text R@1 | R@5 | R@10 | Text-to-Image R@1 | R@5 | R@10 | MR |",
        "|---|---|" + "---:|" * len(keys),
    ]
    for r in results:
        cells = [f"{r['metrics'][k]:.2f}" if k in r["metrics"] else "-" for k in keys]
        lines.append(f"| {r['dataset']} ({r['split']}) | {r.get('model', 'model')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(result: dict, output_dir: str | Path) -> dict[str, Path]:
    """Write results.json (with "model_index") and results.md into output_dir; returns their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    result = {**result, "model_index": model_index_entries(result)}
    table = zero_shot_table([result]) if result["task"] == "zero-shot-classification" else retrieval_table([result])
    paths = {"json": output_dir / "results.json", "markdown": output_dir / "results.md"}
    paths["json"].write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
    paths["markdown"].write_text(table, encoding="utf-8")
    return paths
