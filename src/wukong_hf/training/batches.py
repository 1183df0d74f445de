"""This process's optimiser steps (lists of k micro-batches) from the configured data, through the one
pipeline in `wukong_hf.data.train_loader` (columns, decoding, bad pairs, AutoAugment, seeding, order).

`plan_steps` decides the source (map-style datasets.Dataset, streamed datasets.IterableDataset or
WebDataset shards) and the run's length before anything is resumed; `StepPlan.loader(start_step)`
then yields the steps from `start_step` on. The DataLoader has a private generator, so building and
iterating it never draws from the global RNG that dropout uses (a resumed run continues dropout's
stream exactly where the checkpoint left it).
"""

from dataclasses import dataclass

import torch

from ..data.train_loader import MapPairSteps, PairEncoder, WukongTrainStream, private_generator
from .config import DataSection, TrainConfigError

__all__ = ["StepPlan", "plan_steps"]


@dataclass
class StepPlan:
    """What the loop iterates: total_steps, whether the source is a stream, and how to build its loader."""

    encoder: PairEncoder
    total_steps: int
    streaming: bool
    source: object  # MapPairSteps, a datasets.IterableDataset or a shard folder / glob
    micro_batch: int
    accumulation: int
    rank: int
    world_size: int
    seed: int
    shuffle: bool
    num_workers: int

    def loader(self, start_step: int) -> torch.utils.data.DataLoader:
        """Steps start_step .. total_steps - 1 (a stream may end earlier), each a list of k micro-batch dicts:
        input_ids (b,L), attention_mask (b,L), pixel_values (b,3,S,S), indices (list), skipped (int)."""
        if self.streaming:
            per_step = self.micro_batch * self.accumulation
            steps = WukongTrainStream(
                self.source, self.encoder, self.micro_batch, accumulation=self.accumulation, rank=self.rank,
                world_size=self.world_size, start_sample=start_step * per_step, seed=self.seed,
                shuffle_buffer=1000 if self.shuffle else 0, as_steps=True,
            )
        else:
            steps = torch.utils.data.Subset(self.source, range(start_step, self.total_steps))
        return torch.utils.data.DataLoader(steps, batch_size=None, num_workers=self.num_workers,
                                           generator=private_generator(self.seed))


def plan_steps(train_dataset, shards: str | None, processor, data: DataSection, *, micro_batch: int,
               accumulation: int, rank: int, world_size: int, seed: int, max_steps: int, epochs: int) -> StepPlan:
    """The run's steps: from `shards` (WebDataset) when given, else from `train_dataset` (map-style when it
    has a length, streamed otherwise). max_steps 0: `epochs` passes over a map-style set."""
    encoder = PairEncoder(processor, data.image_column, data.caption_column, data.augment)
    streaming = shards is not None or not hasattr(train_dataset, "__len__")
    if streaming and max_steps == 0:
        raise TrainConfigError("A streamed training set has no length: set loop.max_steps.")
    common = dict(micro_batch=micro_batch, accumulation=accumulation, rank=rank, world_size=world_size, seed=seed,
                  shuffle=data.shuffle)
    if streaming:
        source, total_steps = shards if shards is not None else train_dataset, max_steps
    else:
        source = MapPairSteps(train_dataset, encoder, **common)
        total_steps = max_steps or epochs * source.steps_per_epoch
        source.total_steps = total_steps
    return StepPlan(encoder=encoder, total_steps=total_steps, streaming=streaming, source=source,
                    num_workers=data.num_workers, **common)
