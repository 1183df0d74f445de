"""Zero-shot image classification metrics: top-1 and top-5 accuracy and mean per-class recall.

Self-contained (numpy, datasets, evaluate only) so it can be published as a Hub evaluate module.
Tie rule: a class scoring exactly as high as the true class ranks above it (ties count against
the model); a NaN score never helps the model.
"""

import datasets
import evaluate
import numpy as np

_CITATION = """\
@misc{gu2022wukong,
  title  = {Wukong: A 100 Million Large-scale Chinese Cross-modal Pre-training Benchmark},
  author = {Gu, Jiaxi and Meng, Xiaojun and Lu, Guansong and Hou, Lu and Niu, Minzhe and Liang, Xiaodan
            and Yao, Lewei and Huang, Runhui and Zhang, Wei and Jiang, Xin and Xu, Chunjing and Xu, Hang},
  year   = {2022},
  url    = {https://arxiv.org/abs/2202.06767}
}
"""

_DESCRIPTION = """\
Zero-shot classification metrics as reported for CLIP-style models (the Wukong paper's Table 5,
CLIP_benchmark): top-1 accuracy, top-5 accuracy and mean per-class recall (the top-1 recall of each
class that has images, averaged over those classes; sklearn's balanced accuracy). All are fractions
in [0, 1].

An image's rank is the number of wrong classes whose score is not lower than the true class's
score, so ties count against the model: a constant scorer gets top-1 = 0 whatever the class
order, where an arg-sort or torch.topk would credit whichever class comes first. A NaN score of a
wrong class outranks the true class; a NaN score of the true class makes the image a miss. Top-k
is reported only when there are more than k classes (with k or fewer classes every image is in the
top k, so the number says nothing).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (default configuration): one list of C class scores per image (logits,
        similarities or probabilities; higher means more likely), every list of the same length C.
    references: the true class index of each image, 0 <= label < C.
    ranks ("ranks" configuration, instead of predictions): each image's rank, the number of wrong
        classes scoring at least as high as its true class (see `count_outranking`). Lets a caller
        that scores millions of images keep only N integers.
    num_classes ("ranks" configuration, required): the number of classes C.
Returns:
    top1_accuracy: fraction of images whose true class ranks first.
    top5_accuracy: fraction ranked in the first five; only when C > 5.
    mean_per_class_recall: top-1 recall per class, averaged over the classes that have images.
Examples:
    >>> zero_shot = evaluate.load("metrics/wukong_zero_shot")
    >>> zero_shot.compute(predictions=[[0.9, 0.1, 0.0], [0.5, 0.5, 0.0]], references=[0, 1])
    {'top1_accuracy': 0.5, 'mean_per_class_recall': 0.5}
    >>> ranks = evaluate.load("metrics/wukong_zero_shot", "ranks")
    >>> ranks.compute(ranks=[0, 3, 0, 7], references=[0, 1, 1, 2], num_classes=10)
    {'top1_accuracy': 0.5, 'top5_accuracy': 0.75, 'mean_per_class_recall': 0.5}
"""

TOP_K = (1, 5)


# best_correct_scores and count_outranking are the same in wukong_zero_shot.py and wukong_retrieval.py:
# each evaluate module is published on its own and may import nothing of the other, so the tie rule is
# written twice and tests/test_eval_metric_modules.py checks the two copies are identical.
def best_correct_scores(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """(Q, C) scores and (Q, C) bool -> (Q,) best score of a correct candidate per query.

    -inf when a query has no correct candidate; NaN when one of its correct scores is NaN.
    """
    return np.where(correct, scores, -np.inf).max(axis=1)


def count_outranking(scores: np.ndarray, best_correct: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """The tie rule, in one place: per query, the wrong candidates scoring >= its best correct score.

    Args:
        scores: (Q, C) float scores of Q queries against C candidates (or a block of them: sum
            the counts over blocks). best_correct: (Q,) from `best_correct_scores`.
        correct: (Q, C) bool, True for correct candidates (they never count).

    Returns:
        (Q,) int64; 0 means ranked first. `not (score < best)` makes NaN on either side count
        against the model.
    """
    scores = np.asarray(scores)
    best_correct = np.asarray(best_correct, dtype=scores.dtype if scores.dtype.kind == "f" else np.float64)
    return (~(scores < best_correct[:, None]) & ~np.asarray(correct, dtype=bool)).sum(axis=1).astype(np.int64)


def class_ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, C) class scores and (N,) true labels -> (N,) rank of each image's true class."""
    correct = np.zeros(scores.shape, dtype=bool)
    correct[np.arange(len(labels)), labels] = True
    return count_outranking(scores, best_correct_scores(scores, correct), correct)


def metrics_from_ranks(ranks: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Top-k accuracy (k < num_classes) and mean per-class recall from ranks and labels."""
    ranks, labels = np.asarray(ranks, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if ranks.shape != labels.shape or ranks.ndim != 1:
        raise ValueError(f"ranks and references must be two lists of the same length, got {ranks.shape} and {labels.shape}.")
    if len(ranks) == 0:
        raise ValueError("No images: predictions and references are empty.")
    if (ranks < 0).any():
        raise ValueError("ranks must be >= 0 (the number of wrong classes scoring at least as high as the true one).")
    if (labels < 0).any() or (labels >= num_classes).any():
        raise ValueError(f"references must be class indices in [0, {num_classes}); got values from {labels.min()} to {labels.max()}.")
    out = {f"top{k}_accuracy": float(np.mean(ranks < k)) for k in TOP_K if k == 1 or num_classes > k}
    hits = np.bincount(labels, weights=(ranks == 0), minlength=num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    present = counts > 0
    out["mean_per_class_recall"] = float(np.mean(hits[present] / counts[present]))
    return out


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class WukongZeroShot(evaluate.Metric):
    """Top-1 / top-5 accuracy and mean per-class recall with ties counted against the model."""

    def _info(self):
        if self.config_name == "ranks":
            features, format = {"ranks": datasets.Value("int64"), "references": datasets.Value("int64")}, "numpy"
        elif self.config_name == "default":
            # float64: storing float32 could turn two distinct scores into a tie.
            features = {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            format = None
        else:
            raise ValueError(f"Unknown configuration {self.config_name!r}: use the default (class scores) or 'ranks'.")
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(features),
            format=format,
            reference_urls=["https://arxiv.org/abs/2202.06767", "https://github.com/LAION-AI/CLIP_benchmark"],
        )

    def _compute(self, references, predictions=None, ranks=None, num_classes=None):
        if self.config_name == "ranks":
            if num_classes is None:
                raise ValueError("The 'ranks' configuration needs num_classes=C (top-5 is only defined for more than 5 classes).")
            return metrics_from_ranks(ranks, references, int(num_classes))
        lengths = {len(row) for row in predictions}
        if len(lengths) > 1:
            raise ValueError(f"Every row of predictions must score the same classes; got rows of lengths {sorted(lengths)}.")
        scores = np.asarray(predictions, dtype=np.float64).reshape(len(predictions), -1)
        labels = np.asarray(references, dtype=np.int64)
        num_classes = scores.shape[1]
        if num_classes == 0:
            raise ValueError("predictions hold no class scores.")
        if (labels < 0).any() or (labels >= num_classes).any():
            raise ValueError(f"references must be class indices in [0, {num_classes}); got values from {labels.min()} to {labels.max()}.")
        return metrics_from_ranks(class_ranks(scores, labels), labels, num_classes)
