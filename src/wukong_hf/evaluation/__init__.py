"""Evaluation: zero-shot classification with Chinese prompts and image-text retrieval (paper Tables 5-6)."""

from .encoding import encode_images, encode_texts
from .image_sources import LabelledImages, hf_dataset_images, image_folder_images, imagenet_val_images
from .metrics import classification_metrics, rank_against_negatives, recall_at_k, retrieval_metrics_from_scores
from .prompts import load_classnames, load_templates
from .report import model_index_entries, retrieval_table, write_report, zero_shot_table
from .retrieval import evaluate_retrieval, retrieval_from_features, retrieval_ranks, shortlist_ranks
from .retrieval_sets import (
    RetrievalSet,
    read_aic_icc,
    read_chinese_clip,
    read_hash_captions,
    read_retrieval_dataset,
    read_retrieval_set,
    write_retrieval_dataset,
)
from .zero_shot import ensemble_class_scores, zero_shot_classification

__all__ = [
    "encode_images",
    "encode_texts",
    "LabelledImages",
    "hf_dataset_images",
    "image_folder_images",
    "imagenet_val_images",
    "classification_metrics",
    "rank_against_negatives",
    "recall_at_k",
    "retrieval_metrics_from_scores",
    "load_classnames",
    "load_templates",
    "model_index_entries",
    "retrieval_table",
    "write_report",
    "zero_shot_table",
    "evaluate_retrieval",
    "retrieval_from_features",
    "retrieval_ranks",
    "shortlist_ranks",
    "RetrievalSet",
    "read_aic_icc",
    "read_chinese_clip",
    "read_hash_captions",
    "read_retrieval_dataset",
    "read_retrieval_set",
    "write_retrieval_dataset",
    "ensemble_class_scores",
    "zero_shot_classification",
]
