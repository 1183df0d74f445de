"""Evaluation reports: one results file per run (its configuration, metrics and model-index
entries), CLIP_benchmark's and Chinese-CLIP's result schemas, and Markdown tables laid out like
the paper's Table 5 (zero-shot top-1, one column per dataset) and Table 6 (retrieval).

Model-index entries (huggingface_hub.EvalResult fields plus "source": "measured") are built here
for both `wukong eval` and training's validation, so the two write the same entries:
- task type: `zero-shot-image-classification`; image-text retrieval has no Hub task id (the Hub's
  task list and evaluate's HF_HUB_ALLOWED_TASKS have none), so it is `other`, named
  "Image-text retrieval".
- metric type: evaluate's metric names, `accuracy` (top-k, args {"k": k}) and `recall` (mean
  per-class recall, args {"average": "macro"}; R@k, args {"k": k}; MR).
- dataset type: the Hub id of the data when it came from the Hub or is a known benchmark on the
  Hub (ImageNet-1k, CIFAR-10/100), else a slug of its name (the field is required and must match
  the Hub's pattern; it then points at no Hub dataset).
- values in percent, 2 decimals (like the paper's reported numbers on the same cards).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

__all__ = [
    "RESULTS_FORMATS",
    "RETRIEVAL_TASK_TYPE",
    "ZERO_SHOT_TASK_TYPE",
    "HUB_DATASETS",
    "hub_dataset_type",
    "model_index_entry",
    "model_index_entries",
    "model_provenance",
    "clip_benchmark_record",
    "chinese_clip_records",
    "zero_shot_table",
    "retrieval_table",
    "write_report",
]

RESULTS_FORMATS = ("clip_benchmark", "chinese-clip")
ZERO_SHOT_TASK_TYPE = ("zero-shot-image-classification", "Zero-shot image classification")
RETRIEVAL_TASK_TYPE = ("other", "Image-text retrieval")  # the Hub has no image-text retrieval task id
# Benchmarks that are on the Hub under these ids (names as users pass them, lower-cased).
HUB_DATASETS = {
    **dict.fromkeys(("imagenet", "imagenet1k", "imagenet-1k", "imagenet1k-cn", "imagenet-1k-cn", "imagenet-cn"), "ILSVRC/imagenet-1k"),
    **dict.fromkeys(("cifar10", "cifar-10", "cifar10-cn", "cifar-10-cn"), "uoft-cs/cifar10"),
    **dict.fromkeys(("cifar100", "cifar-100", "cifar100-cn", "cifar-100-cn"), "uoft-cs/cifar100"),
}
_HUB_ID = re.compile(r"[\w-]+/[\w.-]+")  # org/name; the Hub checks dataset.type against ^(?:[\w-]+/)?[\w.-]+$
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def hub_dataset_type(name: str, source: str | None = None) -> str:
    """The model-index `dataset.type`: the Hub id the data came from, a known benchmark's Hub id, or a slug of name."""
    if source and _HUB_ID.fullmatch(str(source)) and not Path(source).exists():
        return str(source)
    if name.lower() in HUB_DATASETS:
        return HUB_DATASETS[name.lower()]
    return re.sub(r"[^\w.-]+", "-", name).strip("-.") or "custom"


def model_index_entry(
    task: tuple[str, str],
    dataset_name: str,
    dataset_type: str,
    split: str,
    metric_type: str,
    metric_name: str,
    value_percent: float,
    metric_args: dict | None = None,
    dataset_config: str | None = None,
) -> dict:
    """One measured result in huggingface_hub.EvalResult's field names, plus "source": "measured"."""
    entry = {
        "task_type": task[0],
        "task_name": task[1],
        "dataset_name": dataset_name,
        "dataset_type": dataset_type,
        "dataset_split": split,
        "metric_type": metric_type,
        "metric_name": metric_name,
        "metric_value": round(float(value_percent), 2),
        "source": "measured",
    }
    if metric_args:
        entry["metric_args"] = metric_args
    if dataset_config:
        entry["dataset_config"] = dataset_config
    return entry


def _setting_label(setting: str, num_templates: int, method: str | None) -> str:
    if setting == "single_prompt":
        return "class name only"
    if num_templates == 1:
        return "1 template"  # one template: every ensemble method gives the same ranking
    return f"{num_templates} templates, {method} ensemble" if method else f"{num_templates} templates"


def model_index_entries(result: dict) -> list[dict]:
    """EvalResult-shaped entries of one zero-shot or retrieval result (see the module docstring).

    Reads result["task"], ["dataset"], ["split"], optional ["dataset_source"] / ["dataset_config"],
    and the metrics in percent: zero-shot ["single_prompt"] / ["ensemble"] ({"top1", "top5"?,
    "mean_per_class_recall"}) with ["num_templates"] and ["ensemble_method"]; retrieval ["metrics"].
    """
    name, split = result["dataset"], result["split"]
    common = dict(dataset_name=name, dataset_type=hub_dataset_type(name, result.get("dataset_source")), split=split,
                  dataset_config=result.get("dataset_config"))
    entries = []
    if result["task"] == "zero-shot-classification":
        for setting in ("single_prompt", "ensemble"):
            metrics = result.get(setting)
            if not metrics:
                continue
            label = _setting_label(setting, result["num_templates"], result.get("ensemble_method"))
            for key, metric_type, metric_name, args in (
                ("top1", "accuracy", "top-1 accuracy", {"k": 1}),
                ("top5", "accuracy", "top-5 accuracy", {"k": 5}),
                ("mean_per_class_recall", "recall", "mean per-class recall", {"average": "macro"}),
            ):
                if key in metrics:
                    entries.append(model_index_entry(ZERO_SHOT_TASK_TYPE, metric_type=metric_type, metric_name=f"{metric_name} ({label})",
                                                     value_percent=metrics[key], metric_args=args, **common))
    else:
        for key, value in result["metrics"].items():
            if key == "MR":
                metric_name, args = "MR (mean of the reported R@k)", None
            else:
                direction, k = key.split("_R@")
                metric_name = f"{'image-to-text' if direction == 'i2t' else 'text-to-image'} R@{k}"
                args = {"k": int(k)}
            entries.append(model_index_entry(RETRIEVAL_TASK_TYPE, metric_type="recall", metric_name=metric_name,
                                             value_percent=value, metric_args=args, **common))
    return entries


def _sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def model_provenance(name_or_path: str | None, preset: str | None = None) -> dict:
    """What was evaluated: {"name_or_path", "revision" (Hub commit), "weights_sha256" {file: sha256}, "preset"}.

    A local folder is hashed (the sha256 of a safetensors file is also its Hub LFS id); a Hub id is
    resolved through the local Hub cache (no network) to its snapshot commit and files.
    """
    if name_or_path is None:
        return {"name_or_path": None, "preset": preset, "revision": None, "weights_sha256": None,
                "note": "randomly initialised preset (smoke run); the weights are not saved"}
    folder, revision = Path(name_or_path), None
    if not folder.is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(name_or_path), "config.json")
        if isinstance(cached, str) and Path(cached).parent.parent.name == "snapshots":
            folder, revision = Path(cached).parent, Path(cached).parent.name
    weights = sorted(p for p in folder.glob("*") if p.suffix in _WEIGHT_SUFFIXES) if folder.is_dir() else []
    return {"name_or_path": str(name_or_path), "preset": None, "revision": revision,
            "weights_sha256": {p.name: _sha256(p) for p in weights} or None}


def _fraction(percent: float | None) -> float:
    return float("nan") if percent is None else round(percent / 100.0, 6)


def _pretrained_label(result: dict) -> str:
    model = result.get("config", {}).get("model", {})
    if model.get("revision"):
        return model["revision"]
    if model.get("weights_sha256"):
        return "sha256:" + next(iter(model["weights_sha256"].values()))[:12]
    return "random-init" if model.get("preset") else "unknown"


def clip_benchmark_record(result: dict) -> dict:
    """The JSON CLIP_benchmark's `eval` writes (read back by its `build`): top-level dataset, model,
    pretrained, task, language and "metrics" as fractions.

    Zero-shot: acc1, acc5 (NaN when there are 5 classes or fewer, as CLIP_benchmark writes for
    fewer than 5), mean_per_class_recall, from the template ensemble (CLIP_benchmark's setting),
    else the single prompt. Retrieval: image_retrieval_recall@k (text-to-image) and
    text_retrieval_recall@k (image-to-text).
    """
    record = {"dataset": result["dataset"], "model": result.get("model", "model"), "pretrained": _pretrained_label(result)}
    if result["task"] == "zero-shot-classification":
        metrics = result.get("ensemble") or result["single_prompt"]
        record["task"] = "zeroshot_classification"
        record["metrics"] = {"acc1": _fraction(metrics["top1"]), "acc5": _fraction(metrics.get("top5")),
                             "mean_per_class_recall": _fraction(metrics["mean_per_class_recall"])}
    else:
        record["task"] = "zeroshot_retrieval"
        record["metrics"] = {}
        for key, value in result["metrics"].items():
            if key != "MR":
                direction, k = key.split("_R@")
                name = "image_retrieval" if direction == "t2i" else "text_retrieval"
                record["metrics"][f"{name}_recall@{k}"] = _fraction(value)
    record["language"] = "cn"
    return record


def chinese_clip_records(result: dict) -> dict[str, dict]:
    """Chinese-CLIP's evaluation output (cn_clip/eval/evaluation.py text-to-image,
    evaluation_tr.py image-to-text) for each direction measured: {"success", "score",
    "scoreJson": {"score", "mean_recall", "r1", "r5", "r10"}}, in percent.
    """
    if result["task"] != "image-text-retrieval":
        raise ValueError("Chinese-CLIP's evaluation output is a retrieval schema; zero-shot results have no Chinese-CLIP "
                         "form (use --results-format clip_benchmark).")
    records = {}
    for short, direction in (("t2i", "text_to_image"), ("i2t", "image_to_text")):
        recalls = [result["metrics"].get(f"{short}_R@{k}") for k in (1, 5, 10)]
        if None in recalls:
            continue
        mean_recall = round(sum(recalls) / 3.0, 4)
        records[direction] = {"success": True, "score": mean_recall, "scoreJson": {
            "score": mean_recall, "mean_recall": mean_recall, "r1": recalls[0], "r5": recalls[1], "r10": recalls[2]}}
    return records


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


def _dump(data: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # allow_nan: CLIP_benchmark itself writes acc5 = NaN (Python's json reads it back).
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2, allow_nan=True), encoding="utf-8")
    return path


def write_report(result: dict, output_dir: str | Path, formats: tuple[str, ...] | list[str] = ()) -> dict[str, Path]:
    """Write the run's files into output_dir and return their paths by kind.

    Always results.json (the result with its "config" and a "model_index" list) and results.md
    (the paper's table); "clip_benchmark" adds clip_benchmark.json; "chinese-clip" (retrieval)
    adds chinese-clip/text_to_image.json and, when measured, chinese-clip/image_to_text.json.
    """
    unknown = sorted(set(formats) - set(RESULTS_FORMATS))
    if unknown:
        raise ValueError(f"Unknown results format(s) {unknown}; choose from {RESULTS_FORMATS}.")
    output_dir = Path(output_dir)
    first = {key: result[key] for key in ("task", "model", "dataset", "split", "config") if key in result}
    result = {**first, **result, "model_index": model_index_entries(result)}  # what was run first, then the numbers
    chinese = chinese_clip_records(result) if "chinese-clip" in formats else {}  # raises before anything is written
    table = zero_shot_table([result]) if result["task"] == "zero-shot-classification" else retrieval_table([result])
    paths = {"json": _dump(result, output_dir / "results.json"), "markdown": output_dir / "results.md"}
    paths["markdown"].write_text(table, encoding="utf-8")
    if "clip_benchmark" in formats:
        paths["clip_benchmark"] = _dump(clip_benchmark_record(result), output_dir / "clip_benchmark.json")
    for direction, record in chinese.items():
        paths[f"chinese-clip {direction}"] = _dump(record, output_dir / "chinese-clip" / f"{direction}.json")
    return paths
