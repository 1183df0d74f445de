"""Wukong 100M data: release reader, caption filters, image downloader, dataset repository, training loader;
and the built-in synthetic shapes set of `wukong demo`."""

from .caption_counts import count_caption_hashes, load_frequent_hashes, merge_caption_counts
from .download import DownloadConfig, DownloadReport, download_images
from .release import ReadReport, convert_release, iter_release_rows, release_stream
from .repository import prepare_dataset_repo, push_dataset_repo
from .synthetic import SyntheticExample, SyntheticShapes
from .text_filters import CaptionFilter, FilterReport, TextFilterConfig, filter_captions, filter_table
from .train_loader import build_train_loader

__all__ = [
    "ReadReport",
    "iter_release_rows",
    "release_stream",
    "convert_release",
    "count_caption_hashes",
    "merge_caption_counts",
    "load_frequent_hashes",
    "TextFilterConfig",
    "FilterReport",
    "CaptionFilter",
    "filter_captions",
    "filter_table",
    "DownloadConfig",
    "DownloadReport",
    "download_images",
    "prepare_dataset_repo",
    "push_dataset_repo",
    "build_train_loader",
    "SyntheticShapes",
    "SyntheticExample",
]
