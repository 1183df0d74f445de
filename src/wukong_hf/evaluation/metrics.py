"""Ranking metrics for zero-shot classification and image-text retrieval, computed from scores.

Ties count against the model: an item's rank is the number of wrong candidates scoring at least
as high as its best correct candidate. A constant scorer therefore gets no credit.
"""

from __future__ import annotations

import torch

__all__ = [
    "rank_against_negatives",
    "recall_at_k",
    "retrieval_metrics_from_scores",
    "classification_metrics",
    "positive_mask",
]


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
    """Number of wrong candidates scoring >= each query's best correct score.

    Args:
        scores: (Q, C) scores of Q queries against C candidates (a block of candidates is fine:
            sum the counts over blocks).
        best_positive: (Q,) best score of a correct candidate per query.
        positives: (Q, C) bool, True for correct candidates (they never count).

    Returns:
        (Q,) long counts; 0 means the query's correct answer is ranked first.
    """
    return ((scores >= best_positive[:, None]) & ~positives).sum(dim=1)


def recall_at_k(ranks: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """ranks (Q,) from rank_against_negatives -> {"R@k": percent of queries with rank < k}."""
    return {f"R@{k}": 100.0 * (ranks < k).float().mean().item() for k in ks}


def retrieval_metrics_from_scores(
    scores_i2t: torch.Tensor,
    scores_t2i: torch.Tensor,
    text_images: list[list[int]],
    directions: tuple[str, ...] = ("i2t", "t2i"),
) -> dict[str, float]:
    """Retrieval recalls from full score matrices (small sets; the streaming evaluator sums blocks).

    Args:
        scores_i2t: (I, T) image-to-text scores. scores_t2i: (T, I) text-to-image scores.
        text_images: for each text, the indices of its correct images (several for MUGE).
        directions: which directions to report; MR is the mean of the reported recalls.

    Returns:
        {"i2t_R@1", ..., "t2i_R@10", "MR"} in percent.
    """
    t2i_pos = positive_mask(scores_t2i.shape[0], scores_t2i.shape[1], text_images)
    i2t_pos = t2i_pos.t()
    metrics: dict[str, float] = {}
    for name, scores, pos in (("i2t", scores_i2t, i2t_pos), ("t2i", scores_t2i, t2i_pos)):
        if name not in directions:
            continue
        has_pos = pos.any(dim=1)
        scores, pos = scores[has_pos], pos[has_pos]
        best = scores.masked_fill(~pos, float("-inf")).amax(dim=1)
        ranks = rank_against_negatives(scores, best, pos)
        metrics.update({f"{name}_{k}": v for k, v in recall_at_k(ranks).items()})
    metrics["MR"] = sum(metrics.values()) / len(metrics)
    return metrics


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> dict[str, float]:
    """Top-1 / top-5 accuracy and mean per-class recall (top-1), all in percent.

    Args:
        scores: (N, C) class scores (logits, similarities or probabilities).
        labels: (N,) true class indices.
        num_classes: classes averaged in mean per-class recall (default C); classes without
            images are left out of the mean.
    """
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(f"scores must be (N, C) and labels (N,), got {tuple(scores.shape)} and {tuple(labels.shape)}.")
    labels = labels.long()
    pos = torch.zeros_like(scores, dtype=torch.bool)
    pos[torch.arange(len(labels)), labels] = True
    ranks = rank_against_negatives(scores, scores.gather(1, labels[:, None])[:, 0], pos)
    top1 = ranks < 1
    per_class = []
    for c in range(num_classes or scores.shape[1]):
        members = labels == c
        if members.any():
            per_class.append(top1[members].float().mean().item())
    return {
        "top1": 100.0 * top1.float().mean().item(),
        "top5": 100.0 * (ranks < 5).float().mean().item(),
        "mean_per_class_recall": 100.0 * sum(per_class) / max(len(per_class), 1),
    }
