"""Image-text retrieval metrics: recall@1/5/10 image-to-text and text-to-image, and mean recall (MR).

Self-contained (numpy, datasets, evaluate only) so it can be published as a Hub evaluate module.
Several captions per image and several images per caption are both allowed; a query counts as
found at k when fewer than k wrong candidates score at least as high as its best correct one
(ties count against the model; a NaN score never helps the model).
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
Image-text retrieval recall as reported for CLIP-style models (the Wukong paper's Table 6,
Chinese-CLIP, CLIP_benchmark): for each direction, recall@k is the fraction of queries with a
correct candidate among the k best-scored ones; mean recall (MR) is the mean of all reported
recalls (six for both directions, three for one). All are fractions in [0, 1].

Ground truth is a set of (image, text) pairs: an image may have several captions (Flickr30K-CN,
COCO-CN) and a caption may describe several images (MUGE). A query's rank is the number of wrong
candidates whose score is not lower than the query's best correct score, so ties count against
the model (a constant scorer gets recall@1 = 0 whatever the candidate order); a NaN score of a
wrong candidate outranks, a NaN score of a correct one makes the query a miss. Queries without any
correct candidate (e.g. MUGE's distractor images) are left out of their direction.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (default configuration): the image-to-text score matrix, one row per image with
        its scores against all T texts (every row of length T; higher means more similar).
    references (default configuration): for each image, the indices of the texts that describe
        it (a list, possibly empty; a text may appear in several images' lists).
    text_to_image_scores (default configuration, optional): the (T, I) text-to-image score
        matrix when the similarity is not symmetric (e.g. FILIP token-wise); default: the
        transpose of predictions.
    directions (default configuration, optional): which directions to report, a subset of
        ("image_to_text", "text_to_image"); default both (MUGE reports text-to-image only).
    ranks ("ranks" configuration, instead of scores): each query's rank, the number of wrong
        candidates scoring at least as high as its best correct one (see `count_outranking`);
        -1 for a query without a correct candidate (left out). Lets a caller that streams
        scores in blocks keep only one integer per query.
    directions ("ranks" configuration): the direction of each query, "image_to_text" or
        "text_to_image"; the directions present are the ones reported.
    recall_at (optional): the k of recall@k, default (1, 5, 10).
Returns:
    image_to_text_recall@k, text_to_image_recall@k: for each reported direction and k.
    mean_recall: the mean of the reported recalls (MR).
Examples:
    >>> retrieval = evaluate.load("metrics/wukong_retrieval")
    >>> retrieval.compute(predictions=[[0.9, 0.8, 0.1], [0.7, 0.2, 0.6]], references=[[0, 1], [2]], recall_at=(1,))
    {'image_to_text_recall@1': 0.5, 'text_to_image_recall@1': 1.0, 'mean_recall': 0.75}
"""

DIRECTIONS = ("image_to_text", "text_to_image")
RECALL_AT = (1, 5, 10)


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


def query_ranks(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """(Q, C) scores and (Q, C) bool -> (Q,) ranks; -1 for queries without a correct candidate."""
    ranks = count_outranking(scores, best_correct_scores(scores, correct), correct)
    ranks[~correct.any(axis=1)] = -1
    return ranks


def metrics_from_ranks(ranks: np.ndarray, directions: np.ndarray, recall_at=RECALL_AT) -> dict:
    """Recall@k per direction present and their mean, from per-query ranks (-1 = left out)."""
    ranks, directions = np.asarray(ranks, dtype=np.int64), np.asarray(directions, dtype=object)
    if ranks.shape != directions.shape or ranks.ndim != 1:
        raise ValueError(f"ranks and directions must be two lists of the same length, got {ranks.shape} and {directions.shape}.")
    unknown = sorted(set(directions.tolist()) - set(DIRECTIONS))
    if unknown:
        raise ValueError(f"Unknown directions {unknown}; each query is 'image_to_text' or 'text_to_image'.")
    if (ranks < -1).any():
        raise ValueError("ranks must be >= 0, or -1 for a query without a correct candidate.")
    out = {}
    for direction in DIRECTIONS:
        kept = ranks[(directions == direction) & (ranks >= 0)]
        if (directions == direction).any() and len(kept) == 0:
            raise ValueError(f"No {direction} query has a correct candidate; check the ground-truth pairs.")
        if len(kept):
            out.update({f"{direction}_recall@{k}": float(np.mean(kept < k)) for k in recall_at})
    if not out:
        raise ValueError("No queries: ranks and directions are empty.")
    out["mean_recall"] = float(np.mean(list(out.values())))
    return out


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class WukongRetrieval(evaluate.Metric):
    """Recall@k both ways and MR for image-text retrieval with several positives per query."""

    def _info(self):
        if self.config_name == "ranks":
            features, format = {"ranks": datasets.Value("int64"), "directions": datasets.Value("string")}, "numpy"
        elif self.config_name == "default":
            # float64: storing float32 could turn two distinct scores into a tie.
            features = {
                "predictions": datasets.Sequence(datasets.Value("float64")),
                "references": datasets.Sequence(datasets.Value("int64")),
            }
            format = None
        else:
            raise ValueError(f"Unknown configuration {self.config_name!r}: use the default (score matrix) or 'ranks'.")
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(features),
            format=format,
            reference_urls=["https://arxiv.org/abs/2202.06767", "https://github.com/OFA-Sys/Chinese-CLIP"],
        )

    def _compute(self, predictions=None, references=None, ranks=None, directions=None, text_to_image_scores=None,
                 recall_at=RECALL_AT):
        if self.config_name == "ranks":
            return metrics_from_ranks(ranks, directions, tuple(recall_at))
        directions = tuple(directions or DIRECTIONS)
        if set(directions) - set(DIRECTIONS) or not directions:
            raise ValueError(f"directions must be a non-empty subset of {DIRECTIONS}, got {directions}.")
        lengths = {len(row) for row in predictions}
        if len(lengths) > 1:
            raise ValueError(f"Every row of predictions must score the same texts; got rows of lengths {sorted(lengths)}.")
        i2t = np.asarray(predictions, dtype=np.float64).reshape(len(predictions), -1)
        num_images, num_texts = i2t.shape
        correct = np.zeros((num_images, num_texts), dtype=bool)
        for image, texts in enumerate(references):
            texts = np.asarray(texts, dtype=np.int64)
            if ((texts < 0) | (texts >= num_texts)).any():
                raise ValueError(f"references[{image}] names texts outside [0, {num_texts}): {texts.tolist()}.")
            correct[image, texts] = True
        if text_to_image_scores is None:
            t2i = i2t.T
        else:
            t2i = np.asarray(text_to_image_scores, dtype=np.float64)
            if t2i.shape != (num_texts, num_images):
                raise ValueError(f"text_to_image_scores must be (texts, images) = {(num_texts, num_images)}, got {t2i.shape}.")
        ranks, query_directions = [], []
        for direction, scores, mask in (("image_to_text", i2t, correct), ("text_to_image", t2i, correct.T)):
            if direction in directions:
                ranks.append(query_ranks(scores, mask))
                query_directions += [direction] * len(mask)
        return metrics_from_ranks(np.concatenate(ranks), np.asarray(query_directions, dtype=object), tuple(recall_at))
