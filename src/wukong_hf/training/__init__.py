"""Training with the paper's LiT recipe under Accelerate: `from wukong_hf.training import TrainConfig, train`.

config (TrainConfig, YAML + overrides) -> recipe (LAMB groups, cosine schedule, AutoAugment) ->
step (global-batch loss, GradCache accumulation) -> loop (train) -> checkpoints (resume).
"""

from .checkpoints import CheckpointError, TrainingProgress
from .config import TrainConfig, TrainConfigError
from .loop import TrainResult, train, zero_shot_accuracy
from .recipe import build_optimizer, build_scheduler, weight_decay_groups

__all__ = [
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "TrainingProgress",
    "CheckpointError",
    "train",
    "zero_shot_accuracy",
    "build_optimizer",
    "build_scheduler",
    "weight_decay_groups",
]
