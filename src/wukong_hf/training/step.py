"""One optimisation step over the global batch, with gradient accumulation that keeps every
micro-batch in the negative set (GradCache, Gao et al. 2021), and LiT as a training decision.

LiT (the paper's locked-image text tuning) is decided here, by the training run, not by the
model: `DualEncoderStep(model, lock_image_tower=True)` freezes the image tower's parameters, keeps
it in eval mode whenever the step is in train mode, and runs it under no_grad; the image head
(projection, token reduction), the text tower and the temperature train.

Accumulation: pass 1 computes the features of all micro-batches without gradients (remembering
the RNG state and, for a locked tower, the tower's outputs); the loss over the whole accumulated
batch gives the gradients of those features; pass 2 re-forwards each micro-batch with gradients
and back-propagates the cached feature gradients. A locked tower is never re-run: pass 2 hands
its pass-1 output straight to `model.image_head`.
"""

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..features import WukongImageFeatures, WukongTextFeatures
from ..modeling_wukong import WukongImageTowerOutput, WukongModel

__all__ = ["DualEncoderStep", "TowerOutputCache", "train_step", "global_batch_loss", "freeze_image_tower"]


def freeze_image_tower(model: WukongModel) -> WukongModel:
    """Freeze the image tower's parameters (LiT). The image head and everything else stay trainable."""
    for param in model.vision_model.parameters():
        param.requires_grad_(False)
    return model


class DualEncoderStep(nn.Module):
    """WukongModel behind one forward, so DDP/FSDP see every trainable parameter used in one call.

    forward(pixel_values (B,3,S,S), input_ids (B,L), attention_mask (B,L), tower_output=None) ->
    (WukongImageFeatures, WukongTextFeatures, inverse temperature (), the image tower's output).
    tower_output: a cached WukongImageTowerOutput of a locked tower; the tower is not run then.
    """

    def __init__(self, model: WukongModel, lock_image_tower: bool = False):
        super().__init__()
        self.model = model
        self.image_tower_locked = lock_image_tower
        if lock_image_tower:
            freeze_image_tower(model)
        self.train(model.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.image_tower_locked:  # a locked tower always runs as at inference (BatchNorm, dropout)
            self.model.vision_model.eval()
        return self

    def forward(self, pixel_values, input_ids, attention_mask, tower_output=None):
        model = self.model
        if tower_output is None:
            with torch.no_grad() if self.image_tower_locked else contextlib.nullcontext():
                tower_output = model.image_tower(pixel_values)
        image = model.image_head(tower_output)
        text = model.encode_text(input_ids, attention_mask)
        kept = _detached_tower(tower_output) if self.image_tower_locked else None
        return image, text, model.inverse_temperature, kept


def _detached_tower(tower: WukongImageTowerOutput) -> WukongImageTowerOutput:
    # What a cache keeps of a locked tower's output: the tensors the head reads, nothing else.
    return WukongImageTowerOutput(tokens=tower.tokens.detach(), pooled=tower.pooled.detach(),
                                  num_prefix_tokens=tower.num_prefix_tokens, grid=tower.grid)


class TowerOutputCache:
    """Locked-tower outputs per dataset index, for runs without augmentation (features never change)."""

    def __init__(self):
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._layout: tuple[int, tuple[int, int] | None] | None = None

    def lookup(self, indices: list[int]) -> WukongImageTowerOutput | None:
        """The stacked tower output for `indices`, or None unless every index is cached."""
        if self._layout is None or not all(i in self._rows for i in indices):
            return None
        tokens, pooled = (torch.stack(parts) for parts in zip(*(self._rows[i] for i in indices)))
        return WukongImageTowerOutput(tokens=tokens, pooled=pooled, num_prefix_tokens=self._layout[0], grid=self._layout[1])

    def store(self, indices: list[int], output: WukongImageTowerOutput) -> None:
        self._layout = (output.num_prefix_tokens, output.grid)
        for row, index in enumerate(indices):
            self._rows[index] = (output.tokens[row].detach(), output.pooled[row].detach())

    def __len__(self) -> int:
        return len(self._rows)


def global_batch_loss(
    loss_fn: nn.Module, image: WukongImageFeatures, text: WukongTextFeatures, inverse_temperature: torch.Tensor,
    accelerator,
) -> torch.Tensor:
    """The loss engine's contrastive loss over the global batch (negatives from every process)."""
    return loss_fn(image, text, inverse_temperature, accelerator=accelerator if accelerator.num_processes > 1 else None)


def _as_leaves(features):
    # Detached copies that collect the loss gradient (GradCache's "representation gradient").
    return features.map_rows(
        lambda name, value: value.detach().requires_grad_() if value.is_floating_point() else value
    )


def _rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda


@contextlib.contextmanager
def _restored_rng(state: tuple) -> Iterator[None]:
    # Re-forwards must see the same dropout masks as pass 1; fork_rng restores the outer stream after.
    cpu, cuda = state
    devices = list(range(torch.cuda.device_count())) if cuda is not None else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        yield


def train_step(
    step_module: nn.Module,
    micro_batches: list[dict],
    loss_fn: Callable,
    accelerator,
    *,
    replay_image_tower: bool,
) -> tuple[torch.Tensor, list]:
    """Forward + backward of one optimiser step; gradients are left in the parameters' .grad.

    micro_batches: k dicts with pixel_values (b,3,S,S), input_ids (b,L), attention_mask (b,L) and
    optionally tower_output (cached locked-tower output). replay_image_tower: the image tower is
    locked, so pass 2 hands its pass-1 outputs to the image head. Returns (loss over the k*b local
    pairs and all processes' negatives, detached; the locked tower's pass-1 outputs per micro-batch,
    None entries for a trainable tower).
    """
    inputs = [{k: mb[k] for k in ("pixel_values", "input_ids", "attention_mask")} | {"tower_output": mb.get("tower_output")}
              for mb in micro_batches]
    if len(inputs) == 1:  # no accumulation: one ordinary forward/backward
        image, text, scale, tower = step_module(**inputs[0])
        loss = global_batch_loss(loss_fn, image, text, scale, accelerator)
        accelerator.backward(loss)
        return loss.detach(), [tower]

    rng_states, towers, images, texts = [], [], [], []
    with torch.no_grad():
        for mb in inputs:
            rng_states.append(_rng_state())
            image, text, scale, tower = step_module(**mb)
            images.append(image)
            texts.append(text)
            towers.append(tower)
    image_leaves = [_as_leaves(f) for f in images]
    text_leaves = [_as_leaves(f) for f in texts]
    scale_leaf = scale.detach().requires_grad_()
    loss = global_batch_loss(
        loss_fn, WukongImageFeatures.concat(image_leaves), WukongTextFeatures.concat(text_leaves), scale_leaf,
        accelerator,
    )
    accelerator.backward(loss)

    last = len(inputs) - 1
    for j, mb in enumerate(inputs):
        if replay_image_tower:
            mb = mb | {"tower_output": towers[j]}
        # Gradients are all-reduced once, on the last micro-batch.
        sync = contextlib.nullcontext() if j == last else accelerator.no_sync(step_module)
        with sync, _restored_rng(rng_states[j]):
            image, text, scale, _ = step_module(**mb)
            pairs = [(image.embeds, image_leaves[j].embeds), (image.token_embeds, image_leaves[j].token_embeds),
                     (text.embeds, text_leaves[j].embeds), (text.token_embeds, text_leaves[j].token_embeds)]
            if j == last:  # the temperature's gradient enters once, inside the synchronised pass
                pairs.append((scale, scale_leaf))
            pairs = [(out, leaf.grad) for out, leaf in pairs if leaf.grad is not None]
            torch.autograd.backward([out for out, _ in pairs], [grad for _, grad in pairs])
    return loss.detach(), towers
