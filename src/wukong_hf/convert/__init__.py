"""Weight conversion: released Wukong checkpoints, Chinese-CLIP, CLIP/timm image towers for LiT."""

from .checkpoint_files import CheckpointFormatError, load_state_dict_file
from .chinese_clip import chinese_clip_config_to_wukong, chinese_clip_to_wukong, convert_chinese_clip
from .image_tower import init_lit_model, load_image_tower, resolve_weights_file
from .original import ConversionReport, convert_original_checkpoint, load_variant_config, original_to_wukong_state_dict
from .scoring_rule import set_scoring_rule

__all__ = [
    "CheckpointFormatError",
    "load_state_dict_file",
    "ConversionReport",
    "convert_original_checkpoint",
    "load_variant_config",
    "set_scoring_rule",
    "original_to_wukong_state_dict",
    "chinese_clip_config_to_wukong",
    "chinese_clip_to_wukong",
    "convert_chinese_clip",
    "load_image_tower",
    "init_lit_model",
    "resolve_weights_file",
]
