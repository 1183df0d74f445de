"""One optimisation step over the global batch, with gradient accumulation that keeps every
micro-batch in the negative set (GradCache, Gao et al. 2021).

Pass 1 computes the features of all micro-batches without gradients (remembering the RNG state
and, for a locked image tower, the tower's outputs); the loss over the whole accumulated batch
gives the gradients of those features; pass 2 re-forwards each micro-batch with gradients and
back-propagates the cached feature gradients. A locked image tower is never re-run: its outputs
are replayed, so only the trainable head (projection, token reduction) runs again.
"""

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..modeling_wukong import WukongImageFeatures, WukongModel, WukongTextFeatures

__all__ = ["DualEncoderStep", "TowerOutputCache", "train_step", "global_batch_loss", "replayed_tower", "captured_tower"]


@contextlib.contextmanager
def replayed_tower(vision_model: nn.Module, output) -> Iterator[None]:
    """Make `vision_model(...)` return `output` instead of running (None: run normally)."""
    if output is None:
        yield
        return
    vision_model.forward = lambda *args, **kwargs: output  # instance attribute shadows the class forward
    try:
        yield
    finally:
        del vision_model.forward


@contextlib.contextmanager
def captured_tower(vision_model: nn.Module, sink: list) -> Iterator[None]:
    """Append the tower's raw output (a ModelOutput) to `sink` while active."""
    handle = vision_model.register_forward_hook(lambda module, args, output: sink.append(output))
    try:
        yield
    finally:
        handle.remove()


def _without_tower_outputs(features):
    # Drop the raw tower outputs: they hold every hidden state and are never needed by the loss.
    return type(features)(embeds=features.embeds, token_embeds=features.token_embeds, token_mask=features.token_mask)


class DualEncoderStep(nn.Module):
    """WukongModel behind one forward, so DDP/FSDP see every trainable parameter used in one call.

    forward(pixel_values (B,3,S,S), input_ids (B,L), attention_mask (B,L), tower_output=None) ->
    (WukongImageFeatures, WukongTextFeatures, temperature scale (), captured tower output or None).
    """

    def __init__(self, model: WukongModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids, attention_mask, tower_output=None):
        captured: list = []
        vision = self.model.vision_model
        with replayed_tower(vision, tower_output), captured_tower(vision, captured):
            image = self.model.encode_image(pixel_values)
        text = self.model.encode_text(input_ids, attention_mask)
        tower = tower_output if tower_output is not None else (captured[0] if captured else None)
        return _without_tower_outputs(image), _without_tower_outputs(text), self.model.temperature_scale, tower


class TowerOutputCache:
    """Locked-tower outputs per dataset index, for runs without augmentation (features never change)."""

    def __init__(self):
        self._rows: dict[int, dict[str, torch.Tensor]] = {}
        self._type = None

    def lookup(self, indices: list[int]):
        """The stacked tower output for `indices`, or None unless every index is cached."""
        if self._type is None or not all(i in self._rows for i in indices):
            return None
        keys = self._rows[indices[0]].keys()
        return self._type(**{k: torch.stack([self._rows[i][k] for i in indices]) for k in keys})

    def store(self, indices: list[int], output) -> None:
        self._type = type(output)
        for row, index in enumerate(indices):
            self._rows[index] = {k: v[row].detach() for k, v in output.items() if torch.is_tensor(v)}

    def __len__(self) -> int:
        return len(self._rows)


def global_batch_loss(
    loss_fn: nn.Module, image: WukongImageFeatures, text: WukongTextFeatures, scale: torch.Tensor, accelerator
) -> torch.Tensor:
    """The loss engine's contrastive loss over the global batch (negatives from every process)."""
    return loss_fn(image, text, scale, accelerator=accelerator if accelerator.num_processes > 1 else None)


def _concat(features: list, cls):
    return cls(**{name: torch.cat([getattr(f, name) for f in features]) for name in ("embeds", "token_embeds", "token_mask")})


def _as_leaves(features):
    # Detached copies that collect the loss gradient (GradCache's "representation gradient").
    return type(features)(
        embeds=features.embeds.detach().requires_grad_(),
        token_embeds=features.token_embeds.detach().requires_grad_(),
        token_mask=features.token_mask,
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
    locked, so pass 2 replays its pass-1 outputs. Returns (loss over the k*b local pairs and all
    processes' negatives, detached; the tower outputs of pass 1 per micro-batch).
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
        loss_fn, _concat(image_leaves, WukongImageFeatures), _concat(text_leaves, WukongTextFeatures), scale_leaf,
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
