"""The project's ranking metrics, computed by the `evaluate` modules shipped in metrics/.

`metrics/wukong_zero_shot` (top-1, top-5, mean per-class recall) and `metrics/wukong_retrieval`
(recall@1/5/10 both ways, MR) are the one implementation: they are installed as package data
(`wukong_hf.metric_modules`) and loaded with `evaluate.load(folder)`, which reads a local folder
without touching the Hub (it copies the script into HF_MODULES_CACHE to import it). This file
only converts tensors, calls them and reports percent rounded to 4 decimals.

Tie rule (the modules' `count_outranking`): a query's rank is the number of wrong candidates
scoring at least as high as its best correct one, so ties count against the model and a constant
scorer gets no credit.
"""

from __future__ import annotations

import functools
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "METRIC_MODULES",
    "metric_module_path",
    "load_metric",
    "rank_against_negatives",
    "recall_at_k",
    "retrieval_metrics_from_ranks",
    "retrieval_metrics_from_scores",
    "classification_metrics",
    "positive_mask",
    "TIE_RULE",
]

METRIC_MODULES = ("wukong_zero_shot", "wukong_retrieval")
TIE_RULE = "ties count against the model: rank = wrong candidates scoring >= the best correct one"
_DIRECTIONS = {"i2t": "image_to_text", "t2i": "text_to_image"}


def metric_module_path(name: str) -> Path:
    """The folder of a shipped evaluate module (metrics/<name>/ in the repository, package data when installed)."""
    if name not in METRIC_MODULES:
        raise ValueError(f"Unknown metric module {name!r}; the package ships {METRIC_MODULES}.")
    # metrics/ is packaged as wukong_hf.metric_modules (pyproject package-dir), a plain folder on disk.
    return Path(str(resources.files("wukong_hf.metric_modules"))) / name


@functools.lru_cache(maxsize=None)
def load_metric(name: str, config_name: str | None = None):
    """`evaluate.load` of a shipped module, once per process; kept in memory (no Arrow cache files)."""
    import evaluate

    return evaluate.load(str(metric_module_path(name)), config_name, keep_in_memory=True)


def _module_namespace(name: str):
    # The Python module evaluate imported the script as: its helper functions (the tie rule) live there.
    return sys.modules[type(load_metric(name)).__module__]


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    return (tensor if tensor.dtype in (torch.float32, torch.float64, torch.bool, torch.int64) else tensor.float()).numpy()


def _percent(metrics: dict[str, float]) -> dict[str, float]:
    return {key: round(100.0 * value, 4) for key, value in metrics.items()}


def positive_mask(num_queries: int, num_candidates: int, positives: list[list[int]]) -> torch.Tensor:
    """(num_queries, num_candidates) bool, True where candidate j is a correct answer for query i."""
    mask = torch.zeros(num_queries, num_candidates, dtype=torch.bool)
    if len(positives) != num_queries:
        raise ValueError(f"positives has {len(positives)} lists but there are {num_queries} queries.")
    for i, cands in enumerate(positives):
        if not cands:
            raise ValueError(f"query {i} has no correct candidate; drop it before scoring.")
        mask[i, torch.as_tensor(cands, dtype=torch.long)] = True
    return mask


def rank_against_negatives(scores: torch.Tensor, best_positive: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Number of wrong candidates scoring >= each query's best correct score (the modules' tie rule).

    Args:
        scores: (Q, C) scores of Q queries against C candidates (a block of candidates is fine:
            sum the counts over blocks).
        best_positive: (Q,) best score of a correct candidate per query.
        positives: (Q, C) bool, True for correct candidates (they never count).

    Returns:
        (Q,) long counts; 0 means the query's correct answer is ranked first.
    """
    count = _module_namespace("wukong_retrieval").count_outranking
    return torch.from_numpy(count(_numpy(scores), _numpy(best_positive), _numpy(positives.bool())))


def recall_at_k(ranks: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """ranks (Q,) from rank_against_negatives -> {"R@k": percent of queries with rank < k}."""
    ranks = _numpy(ranks.long())
    metrics = load_metric("wukong_retrieval", "ranks").compute(
        ranks=ranks, directions=["text_to_image"] * len(ranks), recall_at=tuple(ks)
    )
    return {f"R@{k}": round(100.0 * metrics[f"text_to_image_recall@{k}"], 4) for k in ks}


def _project_names(metrics: dict[str, float]) -> dict[str, float]:
    renamed = {}
    for key, value in metrics.items():
        if key == "mean_recall":
            continue
        direction, k = key.split("_recall@")
        renamed[f"{'i2t' if direction == 'image_to_text' else 't2i'}_R@{k}"] = value
    return {**renamed, "MR": metrics["mean_recall"]}


def retrieval_metrics_from_ranks(
    i2t_ranks: torch.Tensor, t2i_ranks: torch.Tensor, directions: tuple[str, ...] = ("i2t", "t2i")
) -> dict[str, float]:
    """{"i2t_R@1", ..., "t2i_R@10", "MR"} in percent from per-query ranks; rank -1 (NO_ANSWER) is left out.

    Args:
        i2t_ranks: (I,) rank of each image's best correct text. t2i_ranks: (T,) the same per text.
        directions: which directions to report; MR is the mean of the reported recalls.
    """
    ranks, labels = [], []
    for short, direction_ranks in (("i2t", i2t_ranks), ("t2i", t2i_ranks)):
        if short in directions:
            ranks.append(_numpy(direction_ranks.long()))
            labels += [_DIRECTIONS[short]] * len(direction_ranks)
    metrics = load_metric("wukong_retrieval", "ranks").compute(ranks=np.concatenate(ranks), directions=labels)
    return _percent(_project_names(metrics))


def retrieval_metrics_from_scores(
    scores_i2t: torch.Tensor,
    scores_t2i: torch.Tensor,
    text_images: list[list[int]],
    directions: tuple[str, ...] = ("i2t", "t2i"),
) -> dict[str, float]:
    """Retrieval recalls from full score matrices (small sets; the streaming evaluator passes ranks).

    Args:
        scores_i2t: (I, T) image-to-text scores. scores_t2i: (T, I) text-to-image scores.
        text_images: for each text, the indices of its correct images (several for MUGE).
        directions: which directions to report; MR is the mean of the reported recalls.

    Returns:
        {"i2t_R@1", ..., "t2i_R@10", "MR"} in percent.
    """
    num_images, num_texts = scores_i2t.shape
    positive_mask(num_texts, num_images, text_images)  # validates: every text has an image
    image_texts: list[list[int]] = [[] for _ in range(num_images)]
    for text, images in enumerate(text_images):
        for image in images:
            image_texts[image].append(text)
    metrics = load_metric("wukong_retrieval").compute(
        predictions=_numpy(scores_i2t),
        references=image_texts,
        text_to_image_scores=_numpy(scores_t2i),
        directions=[_DIRECTIONS[d] for d in directions],
    )
    return _percent(_project_names(metrics))


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> dict[str, float]:
    """Top-1 / top-5 accuracy and mean per-class recall (top-1), all in percent.

    Args:
        scores: (N, C) class scores (logits, similarities or probabilities).
        labels: (N,) true class indices.
        num_classes: C (default scores.shape[1]); top-5 is left out when C <= 5 (every image is
            then in the top 5); classes without images are left out of the mean per-class recall.

    Returns:
        {"top1", "top5" (only when C > 5), "mean_per_class_recall"} in percent, 4 decimals.
    """
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(f"scores must be (N, C) and labels (N,), got {tuple(scores.shape)} and {tuple(labels.shape)}.")
    num_classes = num_classes or scores.shape[1]
    if num_classes != scores.shape[1]:
        raise ValueError(f"scores have {scores.shape[1]} class columns but num_classes is {num_classes}.")
    labels = _numpy(labels.long())
    if len(labels) and ((labels < 0) | (labels >= num_classes)).any():
        raise ValueError(f"labels must be class indices in [0, {num_classes}).")
    ranks = _module_namespace("wukong_zero_shot").class_ranks(_numpy(scores), labels)
    metrics = load_metric("wukong_zero_shot", "ranks").compute(ranks=ranks, references=labels, num_classes=num_classes)
    names = {"top1_accuracy": "top1", "top5_accuracy": "top5", "mean_per_class_recall": "mean_per_class_recall"}
    return _percent({names[key]: value for key, value in metrics.items()})
