"""wukong-hf: Wukong Chinese vision-language models (global and token-wise FILIP heads) for transformers.

Importing the package registers WukongConfig, WukongModel and WukongProcessor with the Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

from .configuration_wukong import WukongConfig
from .evaluation import evaluate_retrieval, read_retrieval_set, zero_shot_classification
from .hub import export_model_folder, push_model
from .features import WukongImageFeatures, WukongTextFeatures
from .image_processing_wukong import WukongImageProcessor
from .losses import ContrastiveLoss, contrastive_loss
from .modeling_wukong import WukongModel, WukongOutput, WukongPreTrainedModel
from .presets import list_presets, preset_config
from .processing_wukong import WukongProcessor
from .similarity import SimilarityRule, global_similarity, select_top_image_tokens, token_wise_similarity

__version__ = "0.1.0"

AutoConfig.register("wukong", WukongConfig, exist_ok=True)
AutoModel.register(WukongConfig, WukongModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(WukongConfig, WukongModel, exist_ok=True)
AutoProcessor.register(WukongConfig, WukongProcessor, exist_ok=True)
# It runs torchvision on PIL images: the same class serves both backends transformers asks for.
AutoImageProcessor.register(
    WukongConfig, image_processor_classes={"torchvision": WukongImageProcessor, "pil": WukongImageProcessor}, exist_ok=True
)

# save_pretrained copies the code files and writes auto_map, so a saved folder also loads with
# trust_remote_code=True where wukong_hf is not installed.
WukongConfig.register_for_auto_class()
WukongModel.register_for_auto_class("AutoModel")
WukongProcessor.register_for_auto_class("AutoProcessor")
WukongImageProcessor.register_for_auto_class("AutoImageProcessor")

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
    "zero_shot_classification",
    "evaluate_retrieval",
    "read_retrieval_set",
    "export_model_folder",
    "push_model",
]
