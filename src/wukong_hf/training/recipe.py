"""The paper's training recipe (Table 4): LAMB, weight-decay groups, cosine schedule, AutoAugment.

LAMB is timm's, the schedule transformers', AutoAugment torchvision's; this module only decides
which parameters decay and wires the hyper-parameters from OptimSection.
"""

import torch
from torch import nn

from .config import OptimSection

__all__ = ["weight_decay_groups", "build_optimizer", "build_scheduler", "build_augmentation", "no_decay_reason"]

# Names of positional / class embeddings across BERT, CLIP and timm towers (all stored as >= 2-D tensors).
_POSITIONAL_NAMES = ("position_embedding", "pos_embed", "positional_embedding", "class_embedding", "cls_token",
                     "relative_position_bias_table", "absolute_pos_embed")


def no_decay_reason(name: str, param: nn.Parameter, module: nn.Module) -> str | None:
    """Why `param` (named `name`, owned by `module`) is excluded from weight decay, or None if it decays.

    Excluded, as in the paper: biases, LayerNorm (any 1-D norm parameter), token embeddings,
    positional embeddings and the temperature (logit_scale).
    """
    if name.endswith("logit_scale"):
        return "temperature"
    if name.endswith("bias"):
        return "bias"
    if isinstance(module, nn.Embedding):
        return "positional embedding" if "position" in name else "token embedding"
    if any(part in name for part in _POSITIONAL_NAMES):
        return "positional embedding"
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)) or param.ndim <= 1:
        return "norm"
    return None


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimiser groups over the trainable parameters: [decayed, not decayed].

    Frozen parameters (a locked image tower) are left out entirely, so the optimiser never
    touches them.
    """
    owners = {f"{mod_name}.{p_name}" if mod_name else p_name: mod
              for mod_name, mod in model.named_modules() for p_name, _ in mod.named_parameters(recurse=False)}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if no_decay_reason(name, param, owners[name]) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, optim: OptimSection) -> torch.optim.Optimizer:
    """timm's LAMB over `weight_decay_groups(model)` with the configured betas, eps and lr."""
    from timm.optim import Lamb

    groups = weight_decay_groups(model, optim.weight_decay)
    if not any(g["params"] for g in groups):
        raise ValueError("The model has no trainable parameters; unlock something before training.")
    max_grad_norm = optim.max_grad_norm or None  # LAMB's own global-norm clipping; 0 in the config means off
    return Lamb(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                weight_decay=optim.weight_decay, max_grad_norm=max_grad_norm)


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up over `warmup_steps`, then cosine decay to 0 at `total_steps` (transformers)."""
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, warmup_steps, max(total_steps, 1))


def build_augmentation(enabled: bool):
    """The paper's augmentation, as the training data pipeline applies it: SeededAutoAugment (torchvision
    AutoAugment, ImageNet policy, seeded per pair; wukong_hf.data.train_loader), or None when off."""
    if not enabled:
        return None
    from ..data.train_loader import SeededAutoAugment

    return SeededAutoAugment()
