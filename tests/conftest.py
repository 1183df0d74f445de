"""Shared fixtures: tiny models from presets, generated images. No test touches the network."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# CLI runs in the tests cache prompt features in a throw-away folder, never in ~/.cache.
os.environ.setdefault("WUKONG_HF_TEXT_CACHE", tempfile.mkdtemp(prefix="wukong-text-cache-"))

import numpy as np
import pytest
import torch
from PIL import Image

import wukong_hf  # noqa: F401  (registers the Auto classes)
from wukong_hf import WukongModel, WukongProcessor, preset_config


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def make_tiny(preset: str = "tiny-token-wise", seed: int = 0, **overrides) -> tuple[WukongModel, WukongProcessor]:
    """A tiny randomly initialised model and its processor, deterministic under `seed`."""
    torch.manual_seed(seed)
    config = preset_config(preset, **overrides)
    return WukongModel(config).eval(), WukongProcessor.from_config(config)


def random_images(n: int, size=(48, 40), seed: int = 0, mode: str = "RGB") -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        arr = (rng.random((size[1], size[0], 3)) * 255).astype("uint8")
        images.append(Image.fromarray(arr, "RGB").convert(mode))
    return images


@pytest.fixture
def tiny_token_wise():
    return make_tiny("tiny-token-wise")


@pytest.fixture
def tiny_global():
    return make_tiny("tiny-global")
