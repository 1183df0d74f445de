"""Zero-shot image classification with Chinese class names: single prompt and template ensembles.

Ensembles (P templates, C classes, unscaled scores s_cp of an image against prompt p of class c,
from the model's SimilarityRule):
  embedding   (global models, paper): class features = normalise(mean_p t_cp) of the normalised
              global prompt embeddings, then scored like any text.
  similarity  (paper, token-wise): score_c = mean_p s_cp.
  probability (released token-wise code): score_c = mean_p softmax_c(s_cp), the softmax over classes
              of the UNSCALED similarity (no temperature).
A model's config.ensemble_method says which one it uses (config.zero_shot_ensemble, or the
paper's choice for its head).
"""

from __future__ import annotations

import time
from functools import partial

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..configuration_wukong import ZERO_SHOT_ENSEMBLES
from ..features import WukongImageFeatures, WukongTextFeatures
from ..similarity import SimilarityRule
from .encoding import encode_images, encode_texts
from .image_sources import LabelledImages
from .metrics import classification_metrics
from .prompts import fill_template
from .text_feature_cache import as_text_cache

__all__ = ["ENSEMBLE_METHODS", "ensemble_class_scores", "zero_shot_classification"]

ENSEMBLE_METHODS = ZERO_SHOT_ENSEMBLES


def ensemble_class_scores(
    images: WukongImageFeatures,
    prompts: WukongTextFeatures,
    num_classes: int,
    rule: SimilarityRule,
    method: str,
    image_block_size: int = 256,
) -> torch.Tensor:
    """Class scores of every image from prompt features.

    Args:
        images: N image features. prompts: C * P prompt features, class-major (prompt c*P + p is
            template p filled with class c).
        rule: the model's SimilarityRule (model.similarity_rule). method: one of ENSEMBLE_METHODS
            (model.config.ensemble_method).
        image_block_size: images scored at once (memory ~ block * C * P scores plus the token maps).

    Returns:
        (N, C) float scores (for "probability", mean probabilities).
    """
    if method not in ENSEMBLE_METHODS:
        raise ValueError(f"Unknown ensemble method {method!r}; choose one of {ENSEMBLE_METHODS}.")
    if len(prompts) % num_classes:
        raise ValueError(f"{len(prompts)} prompt features do not split evenly over {num_classes} classes.")
    per_class = len(prompts) // num_classes
    if method == "embedding":
        if rule.uses_tokens:
            raise ValueError("The 'embedding' ensemble averages global embeddings; use 'similarity' or 'probability' for token-wise models.")
        classes = WukongTextFeatures(embeds=F.normalize(prompts.embeds.reshape(num_classes, per_class, -1).mean(dim=1), dim=-1))
        return rule.scores(images, classes)[0]
    blocks = []
    for start in tqdm(range(0, len(images), image_block_size), desc="scoring", unit="block"):
        scores, _ = rule.scores(images.select(slice(start, start + image_block_size)), prompts)
        scores = scores.reshape(scores.shape[0], num_classes, per_class)
        if method == "probability":
            scores = scores.softmax(dim=1)
        blocks.append(scores.mean(dim=2))
    return torch.cat(blocks)


@torch.no_grad()
def zero_shot_classification(
    model,
    processor,
    images: LabelledImages,
    classnames: list[str],
    templates: list[str],
    ensemble: str | None = None,
    batch_size: int = 64,
    image_block_size: int = 256,
    dataset_name: str = "custom",
    split: str = "test",
    text_cache=None,
) -> dict:
    """Zero-shot top-1/top-5 and mean per-class recall, single prompt and template ensemble.

    Args:
        model: WukongModel in eval mode. processor: its WukongProcessor.
        images: labelled images (see image_sources). classnames: C Chinese names in label order.
        templates: prompt templates with a {c} slot; ["{c}"] skips the ensemble.
        ensemble: ensemble method; None uses the model's own (config.ensemble_method: its
            zero_shot_ensemble, or the paper's choice for its head).
        dataset_name, split: how the result names the data in reports.
        text_cache: None (encode every prompt), True (the default cache folder, see
            text_feature_cache), a folder, or a TextFeatureCache: prompt features are read from
            it when this text tower, tokenizer and prompt list were encoded before.

    Returns:
        {"single_prompt": metrics, "ensemble": metrics or None, "skipped_images": [...], ...}
        with metrics = {"top1", "top5", "mean_per_class_recall"} in percent.
    """
    rule = model.similarity_rule
    ensemble = ensemble or model.config.ensemble_method
    if ensemble not in ENSEMBLE_METHODS:
        raise ValueError(f"Unknown ensemble method {ensemble!r}; choose one of {ENSEMBLE_METHODS}.")
    bad = sorted({label for label in images.labels if not 0 <= label < len(classnames)})
    if bad:
        raise ValueError(
            f"Labels {bad[:5]} are outside the {len(classnames)} class names; the label file must list every class in label order."
        )
    started = time.perf_counter()
    image_bank, kept, skipped = encode_images(model, processor, images.loaders, batch_size=batch_size)
    labels = torch.as_tensor([images.labels[i] for i in kept])
    cache = as_text_cache(text_cache)
    encode_prompts = cache.encoder_for(model, processor) if cache else partial(encode_texts, model, processor)

    def evaluate(prompt_templates: list[str], method: str) -> dict[str, float]:
        texts = [fill_template(t, c) for c in classnames for t in prompt_templates]
        prompts = encode_prompts(texts, desc=f"{len(prompt_templates)} prompt(s) x {len(classnames)} classes")
        scores = ensemble_class_scores(image_bank, prompts, len(classnames), rule, method, image_block_size=image_block_size)
        return classification_metrics(scores, labels, len(classnames))

    single = evaluate(["{c}"], "similarity")
    ensembled = None if templates == ["{c}"] else evaluate(templates, ensemble)
    return {
        "task": "zero-shot-classification",
        "dataset": dataset_name,
        "split": split,
        "similarity": rule.kind,
        "token_wise_padding": rule.padding,
        "ensemble_method": ensemble,
        "num_templates": len(templates),
        "num_classes": len(classnames),
        "num_images": len(kept),
        "single_prompt": single,
        "ensemble": ensembled,
        "skipped_images": [{"id": images.ids[i], "reason": reason} for i, reason in skipped],
        "text_cache": None if cache is None else {"folder": str(cache.folder), "hits": cache.hits, "misses": cache.misses},
        "seconds": round(time.perf_counter() - started, 2),
    }
