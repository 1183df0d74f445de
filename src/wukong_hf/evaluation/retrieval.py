"""Image-text retrieval: R@1/5/10 both ways and MR, exact token-wise scoring in bounded memory or a
global shortlist re-ranked token-wise.

Exact scoring streams blocks of images against all texts twice: first only the correct pairs
(each query's best correct score), then every pair, counting per query the wrong candidates that
score at least as high. Memory: features + one block of scores, never the full I x T matrix.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from ..features import WukongImageFeatures, WukongTextFeatures
from ..similarity import SimilarityRule
from .encoding import encode_images, encode_texts
from .metrics import rank_against_negatives
from .metrics import retrieval_metrics_from_ranks  # the wukong_retrieval evaluate module; re-exported here
from .retrieval_sets import RetrievalSet

NO_ANSWER = -1  # rank of an image that no text describes (MUGE distractors)

__all__ = ["NO_ANSWER", "retrieval_ranks", "shortlist_ranks", "retrieval_metrics_from_ranks", "retrieval_from_features", "evaluate_retrieval"]


def _pairs(text_images: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [(i, j) for j, images in enumerate(text_images) for i in images]
    if not pairs:
        raise ValueError("No (image, text) pairs: every text needs at least one image.")
    image_idx, text_idx = torch.tensor(pairs, dtype=torch.long).t()
    return image_idx, text_idx


def retrieval_ranks(
    images: WukongImageFeatures,
    texts: WukongTextFeatures,
    text_images: list[list[int]],
    rule: SimilarityRule,
    image_block_size: int = 128,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ranks of every query's best correct answer.

    Args:
        images: I image features. texts: T text features.
        text_images: for each text, the indices of its correct images.
        rule: the model's SimilarityRule (model.similarity_rule).
        image_block_size: images scored at once; peak extra memory ~ block * T * n1 * n2 floats
            inside token_wise_similarity's own text blocking, plus block * T scores.

    Returns:
        (i2t_ranks (I,), t2i_ranks (T,)) long; images without any text get NO_ANSWER (-1) and
        are left out of the metrics.
    """
    num_images, num_texts = len(images), len(texts)
    pair_img, pair_txt = _pairs(text_images)
    best_i2t = torch.full((num_images,), float("-inf"))
    best_t2i = torch.full((num_texts,), float("-inf"))
    blocks = range(0, num_images, image_block_size)
    for start in tqdm(blocks, desc="scoring correct pairs", unit="block", disable=not progress):
        stop = min(start + image_block_size, num_images)
        sel = (pair_img >= start) & (pair_img < stop)
        local_texts = torch.unique(pair_txt[sel])
        i2t, t2i = rule.scores(images.select(slice(start, stop)), texts.select(local_texts))
        rows, cols = pair_img[sel] - start, torch.searchsorted(local_texts, pair_txt[sel])
        best_i2t.scatter_reduce_(0, pair_img[sel], i2t[rows, cols], reduce="amax")
        best_t2i.scatter_reduce_(0, pair_txt[sel], t2i[cols, rows], reduce="amax")
    i2t_ranks = torch.zeros(num_images, dtype=torch.long)
    t2i_ranks = torch.zeros(num_texts, dtype=torch.long)
    for start in tqdm(blocks, desc="scoring all pairs", unit="block", disable=not progress):
        stop = min(start + image_block_size, num_images)
        sel = (pair_img >= start) & (pair_img < stop)
        correct = torch.zeros(stop - start, num_texts, dtype=torch.bool)
        correct[pair_img[sel] - start, pair_txt[sel]] = True
        i2t, t2i = rule.scores(images.select(slice(start, stop)), texts)
        i2t_ranks[start:stop] = rank_against_negatives(i2t, best_i2t[start:stop], correct)
        t2i_ranks += rank_against_negatives(t2i, best_t2i, correct.t())
    i2t_ranks[torch.isinf(best_i2t)] = NO_ANSWER
    return i2t_ranks, t2i_ranks


def shortlist_ranks(
    images: WukongImageFeatures,
    texts: WukongTextFeatures,
    text_images: list[list[int]],
    rule: SimilarityRule,
    shortlist: int = 64,
    block_size: int = 1024,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks when each query keeps its top-`shortlist` candidates by global embeddings and
    re-ranks them by `rule` (the model's token-wise rule). A query whose correct answers all miss
    the shortlist gets rank `shortlist` (a miss at every R@k with k <= shortlist).

    Returns (i2t_ranks (I,), t2i_ranks (T,)) like retrieval_ranks.
    """
    num_images, num_texts = len(images), len(texts)
    pair_img, pair_txt = _pairs(text_images)
    correct_texts: list[set[int]] = [set() for _ in range(num_images)]
    for i, j in zip(pair_img.tolist(), pair_txt.tolist()):
        correct_texts[i].add(j)

    shortlist_rule = SimilarityRule("global")  # the shortlist: global embeddings, whatever the model's head

    def rerank(queries, candidates, num_queries: int, query_is_image: bool) -> torch.Tensor:
        k = min(shortlist, len(candidates))
        ranks = torch.full((num_queries,), shortlist, dtype=torch.long)
        for start in tqdm(range(0, num_queries, block_size), desc="shortlist + rerank", unit="block", disable=not progress):
            stop = min(start + block_size, num_queries)
            block = queries.select(slice(start, stop))
            if query_is_image:
                coarse = shortlist_rule.scores(block, candidates)[0]
            else:
                coarse = shortlist_rule.scores(candidates, block)[1]
            top = coarse.topk(k, dim=1).indices
            for q in range(start, stop):
                cand = top[q - start]
                if query_is_image:
                    scores = rule.scores(queries.select([q]), candidates.select(cand))[0][0]
                    is_correct = torch.tensor([c in correct_texts[q] for c in cand.tolist()])
                else:
                    scores = rule.scores(candidates.select(cand), queries.select([q]))[1][0]
                    is_correct = torch.tensor([q in correct_texts[c] for c in cand.tolist()])
                if is_correct.any():
                    best = scores[is_correct].max()
                    ranks[q] = rank_against_negatives(scores[None], best[None], is_correct[None])[0]
        return ranks

    i2t = rerank(images, texts, num_images, True)
    i2t[torch.tensor([not c for c in correct_texts], dtype=torch.bool)] = NO_ANSWER
    return i2t, rerank(texts, images, num_texts, False)


def retrieval_from_features(
    images: WukongImageFeatures,
    texts: WukongTextFeatures,
    text_images: list[list[int]],
    rule: SimilarityRule,
    directions: tuple[str, ...] = ("i2t", "t2i"),
    shortlist: int | None = None,
    image_block_size: int = 128,
    progress: bool = True,
) -> dict[str, float]:
    """Retrieval metrics from cached features; shortlist (token-wise rules only) re-ranks the global top-k."""
    if shortlist and rule.uses_tokens:
        ranks = shortlist_ranks(images, texts, text_images, rule, shortlist, progress=progress)
    else:
        ranks = retrieval_ranks(images, texts, text_images, rule, image_block_size, progress=progress)
    return retrieval_metrics_from_ranks(*ranks, directions=directions)


@torch.no_grad()
def evaluate_retrieval(
    model,
    processor,
    dataset: RetrievalSet,
    batch_size: int = 64,
    shortlist: int | None = None,
    image_block_size: int = 128,
    image_embeddings=None,
    text_embeddings=None,
) -> dict:
    """Encode a retrieval set once and report R@1/5/10 per direction and MR.

    image_embeddings / text_embeddings: Embeddings read with `load_embeddings` (`wukong embed`);
    the set's images / texts are looked up there by id instead of being encoded. With both, no
    model is needed (model and processor may be None) and the file's SimilarityRule scores.

    Returns {"metrics": {...}, "num_images", "num_texts", "skipped_rows", "skipped_images", ...};
    MUGE-style sets (dataset.directions == ("t2i",)) report text-to-image only, MR over three.
    """
    from .embeddings import check_embeddings

    started = time.perf_counter()
    rule = check_embeddings(model, image_embeddings, text_embeddings)
    if image_embeddings is not None:  # images unreadable when the file was written stay skipped, as when encoding
        unreadable_then = image_embeddings.skipped_ids()
        kept = [i for i, id_ in enumerate(dataset.image_ids) if id_ not in unreadable_then]
        unreadable = [(i, unreadable_then[id_]) for i, id_ in enumerate(dataset.image_ids) if id_ in unreadable_then]
        image_bank = image_embeddings.select_ids([dataset.image_ids[i] for i in kept])
    else:
        image_bank, kept, unreadable = encode_images(model, processor, dataset.image_loaders, batch_size=batch_size)
    new_index = {old: new for new, old in enumerate(kept)}
    text_keep, text_images = [], []
    for j, images in enumerate(dataset.text_images):
        present = [new_index[i] for i in images if i in new_index]
        if present:
            text_keep.append(j)
            text_images.append(present)
    if not text_keep:
        raise ValueError(f"No text of {dataset.name} has a readable image; check the image files.")
    if text_embeddings is not None:
        text_bank = text_embeddings.select_ids([dataset.text_ids[j] for j in text_keep])
    else:
        text_bank = encode_texts(model, processor, [dataset.texts[j] for j in text_keep], batch_size=4 * batch_size)
    metrics = retrieval_from_features(
        image_bank, text_bank, text_images, rule, dataset.directions, shortlist, image_block_size
    )
    return {
        "task": "image-text-retrieval",
        "dataset": dataset.name,
        "split": dataset.split,
        "similarity": rule.kind,
        "token_wise_padding": rule.padding,
        "directions": list(dataset.directions),
        "shortlist": shortlist,
        "num_images": len(kept),
        "num_texts": len(text_keep),
        "metrics": metrics,
        "skipped_rows": dataset.skipped,
        "skipped_images": [{"id": dataset.image_ids[i], "reason": r} for i, r in unreadable],
        "texts_without_readable_image": len(dataset.texts) - len(text_keep),
        "seconds": round(time.perf_counter() - started, 2),
    }
