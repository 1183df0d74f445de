"""Ranking metrics and ensemble maths against hand-computed cases and direct computations."""

import pytest
import torch
import torch.nn.functional as F

from wukong_hf import SimilarityRule, WukongImageFeatures, WukongTextFeatures
from wukong_hf.evaluation import (
    classification_metrics,
    ensemble_class_scores,
    retrieval_metrics_from_scores,
    retrieval_ranks,
    shortlist_ranks,
)
from wukong_hf.evaluation.retrieval import NO_ANSWER, retrieval_metrics_from_ranks
from wukong_hf.similarity import token_wise_similarity


def test_classification_top1_top5_and_ties_count_against_the_model():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.1], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 1, 0, 2])
    m = classification_metrics(scores, labels)
    # row 0 right; row 1 tied with a wrong class -> miss; row 2 ranked 2nd -> miss; row 3 right.
    assert m["top1"] == pytest.approx(50.0)
    assert "top5" not in m  # 3 classes: every image is in the top 5, so top-5 is not reported
    # class 0: 1/2, class 1: 0/1, class 2: 1/1 -> mean 50.
    assert m["mean_per_class_recall"] == pytest.approx(50.0)


def test_classification_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"scores must be \(N, C\) and labels \(N,\)"):
        classification_metrics(torch.zeros(3, 2), torch.zeros(4))


def test_retrieval_several_captions_per_image():
    # 2 images, 4 texts: texts 0,1 describe image 0; texts 2,3 describe image 1.
    i2t = torch.tensor([[0.1, 0.9, 0.8, 0.2], [0.7, 0.1, 0.3, 0.6]])
    t2i = torch.tensor([[0.2, 0.5], [0.9, 0.1], [0.4, 0.4], [0.1, 0.8]])
    m = retrieval_metrics_from_scores(i2t, t2i, [[0], [0], [1], [1]])
    # image 0: best correct 0.9 -> rank 0; image 1: best correct 0.6 < 0.7 (text 0) -> rank 1.
    assert m["i2t_R@1"] == pytest.approx(50.0) and m["i2t_R@5"] == pytest.approx(100.0)
    # texts: 0 miss (0.2 < 0.5), 1 hit, 2 tie -> miss, 3 hit.
    assert m["t2i_R@1"] == pytest.approx(50.0)
    assert m["MR"] == pytest.approx((50 + 100 + 100 + 50 + 100 + 100) / 6)


def test_retrieval_muge_several_images_per_text_is_text_to_image_only():
    # text 0 describes images 0 and 1 (either counts), text 1 describes image 2.
    t2i = torch.tensor([[0.1, 0.8, 0.9], [0.3, 0.2, 0.1]])
    m = retrieval_metrics_from_scores(t2i.t(), t2i, [[0, 1], [2]], directions=("t2i",))
    # text 0: best correct 0.8, one wrong (0.9) above -> rank 1; text 1: 0.1 below both -> rank 2.
    assert m == {"t2i_R@1": 0.0, "t2i_R@5": 100.0, "t2i_R@10": 100.0, "MR": pytest.approx(200 / 3)}


def test_retrieval_rejects_text_without_image():
    with pytest.raises(ValueError, match="query 1 has no correct candidate"):
        retrieval_metrics_from_scores(torch.zeros(1, 2), torch.zeros(2, 1), [[0], []])


def _random_bank(n, tokens, dim, seed, kind=WukongImageFeatures):
    g = torch.Generator().manual_seed(seed)
    tok = F.normalize(torch.randn(n, tokens, dim, generator=g), dim=-1)
    mask = torch.rand(n, tokens, generator=g) > 0.3
    mask[:, 0] = True
    return kind(F.normalize(tok.mean(1), dim=-1), tok, mask)


def _texts(n, tokens, dim, seed):
    return _random_bank(n, tokens, dim, seed, kind=WukongTextFeatures)


TOKEN_WISE, GLOBAL = SimilarityRule("token_wise"), SimilarityRule("global")


@pytest.mark.parametrize("similarity", ["token_wise", "global"])
def test_streaming_ranks_match_full_matrix(similarity):
    images, texts = _random_bank(13, 5, 8, 0), _texts(29, 6, 8, 1)
    text_images = [[j % 13] for j in range(26)] + [[0, 5], [3, 7, 9], [12]]  # MUGE-like extra texts
    if similarity == "global":
        i2t = images.embeds @ texts.embeds.t()
        t2i = i2t.t()
    else:
        i2t, t2i = token_wise_similarity(images.token_embeds, texts.token_embeds, images.token_mask, texts.token_mask)
    expected = retrieval_metrics_from_scores(i2t, t2i, text_images)
    ranks = retrieval_ranks(images, texts, text_images, SimilarityRule(similarity), image_block_size=4, progress=False)
    assert retrieval_metrics_from_ranks(*ranks) == pytest.approx(expected)


def test_images_without_text_are_left_out_of_image_to_text():
    images, texts = _random_bank(4, 3, 8, 2), _texts(3, 3, 8, 3)
    i2t_ranks, _ = retrieval_ranks(images, texts, [[0], [1], [1]], TOKEN_WISE, progress=False)
    assert (i2t_ranks[2:] == NO_ANSWER).all() and (i2t_ranks[:2] >= 0).all()


def test_full_shortlist_equals_exact_and_small_shortlist_only_loses():
    images, texts = _random_bank(10, 4, 8, 4), _texts(20, 5, 8, 5)
    text_images = [[j % 10] for j in range(20)]
    exact = retrieval_ranks(images, texts, text_images, TOKEN_WISE, progress=False)
    full = shortlist_ranks(images, texts, text_images, TOKEN_WISE, shortlist=20, progress=False)
    assert torch.equal(exact[0], full[0]) and torch.equal(exact[1], full[1])
    short = shortlist_ranks(images, texts, text_images, TOKEN_WISE, shortlist=3, progress=False)
    # A shortlist can only miss: whatever it ranks first within the shortlist was first overall or a miss.
    assert ((short[0] == 3) | (short[0] <= exact[0])).all()


def test_embedding_ensemble_is_mean_of_normalised_embeddings_renormalised():
    images, prompts = _random_bank(6, 3, 8, 6), _texts(20, 3, 8, 7)
    got = ensemble_class_scores(images, prompts, 4, GLOBAL, "embedding")
    classes = F.normalize(torch.stack([prompts.embeds[c * 5 : (c + 1) * 5].mean(0) for c in range(4)]), dim=-1)
    torch.testing.assert_close(got, images.embeds @ classes.t())


def test_similarity_and_probability_ensembles_match_direct_computation():
    images, prompts = _random_bank(6, 3, 8, 8), _texts(20, 4, 8, 9)
    i2t, _ = token_wise_similarity(images.token_embeds, prompts.token_embeds, images.token_mask, prompts.token_mask)
    direct_sim = torch.stack([i2t[:, [c * 5 + p for p in range(5)]].mean(1) for c in range(4)], dim=1)
    # The released code's probability ensemble: softmax over classes of the UNSCALED similarity.
    per_template = torch.stack([i2t[:, [c * 5 + p for c in range(4)]].softmax(1) for p in range(5)])
    got_sim = ensemble_class_scores(images, prompts, 4, TOKEN_WISE, "similarity", image_block_size=4)
    got_prob = ensemble_class_scores(images, prompts, 4, TOKEN_WISE, "probability", image_block_size=4)
    torch.testing.assert_close(got_sim, direct_sim)
    torch.testing.assert_close(got_prob, per_template.mean(0))


def test_ensemble_rejects_embedding_mean_for_token_wise_and_uneven_prompts():
    images, prompts = _random_bank(2, 3, 8, 10), _texts(6, 3, 8, 11)
    with pytest.raises(ValueError, match="use 'similarity' or 'probability' for token-wise"):
        ensemble_class_scores(images, prompts, 3, TOKEN_WISE, "embedding")
    with pytest.raises(ValueError, match="do not split evenly over 4 classes"):
        ensemble_class_scores(images, prompts, 4, TOKEN_WISE, "similarity")
