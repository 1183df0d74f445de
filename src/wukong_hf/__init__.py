"""wukong-hf: Wukong Chinese vision-language models (global and token-wise FILIP heads) for transformers.

Importing the package registers WukongConfig, WukongModel and WukongProcessor with the Auto classes and
imports only the model code. Evaluation, Hub export, loading helpers and caption scoring are imported
on first use of their names (module __getattr__); training and data stay in their subpackages.
"""

from importlib import import_module as _import_module
from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

from .configuration_wukong import WukongConfig
from .features import WukongImageFeatures, WukongTextFeatures
from .image_processing_wukong import WukongImageProcessor
from .losses import ContrastiveLoss, contrastive_loss
from .modeling_wukong import WukongModel, WukongOutput, WukongPreTrainedModel
from .presets import list_presets, preset_config
from .processing_wukong import WukongProcessor
from .similarity import SimilarityRule, global_similarity, select_top_image_tokens, token_wise_similarity

try:
    __version__ = _version("wukong-hf")  # one source: pyproject.toml's version
except _PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"

AutoConfig.register("wukong", WukongConfig, exist_ok=True)
AutoModel.register(WukongConfig, WukongModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(WukongConfig, WukongModel, exist_ok=True)
AutoProcessor.register(WukongConfig, WukongProcessor, exist_ok=True)
# It runs torchvision on PIL images: the same class serves both backends transformers asks for.
AutoImageProcessor.register(
    WukongConfig, image_processor_classes={"torchvision": WukongImageProcessor, "pil": WukongImageProcessor}, exist_ok=True
)

# save_pretrained copies the code files and writes auto_map, so a saved folder also loads with
# trust_remote_code=True where wukong_hf is not installed. A model class records one Auto class only:
# WukongModel.save_pretrained adds AutoModelForZeroShotImageClassification (the pipeline's).
WukongConfig.register_for_auto_class()
WukongModel.register_for_auto_class("AutoModel")
WukongProcessor.register_for_auto_class("AutoProcessor")
WukongImageProcessor.register_for_auto_class("AutoImageProcessor")

# Public names whose modules pull in more than the model (evaluation, huggingface_hub's upload API):
# imported on first access so `import wukong_hf` stays light.
_LAZY_NAMES = {
    "zero_shot_classification": "wukong_hf.evaluation.zero_shot",
    "evaluate_retrieval": "wukong_hf.evaluation.retrieval",
    "read_retrieval_set": "wukong_hf.evaluation.retrieval_sets",
    "export_model_folder": "wukong_hf.hub",
    "push_model": "wukong_hf.hub",
    "load_model_and_processor": "wukong_hf.model_folders",
    "save_model_folder": "wukong_hf.model_folders",
    "score_captions": "wukong_hf.caption_scoring",
}


def __getattr__(name: str):
    if name in _LAZY_NAMES:
        value = getattr(_import_module(_LAZY_NAMES[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'wukong_hf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES))


__all__ = [
    "WukongConfig",
    "WukongModel",
    "WukongPreTrainedModel",
    "WukongOutput",
    "WukongImageFeatures",
    "WukongTextFeatures",
    "WukongProcessor",
    "WukongImageProcessor",
    "SimilarityRule",
    "token_wise_similarity",
    "global_similarity",
    "contrastive_loss",
    "ContrastiveLoss",
    "select_top_image_tokens",
    "list_presets",
    "preset_config",
    *_LAZY_NAMES,
]
