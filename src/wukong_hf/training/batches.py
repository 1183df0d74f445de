"""Deterministic micro-batches of (image, caption) pairs for every process and step.

The order is a function of (seed, epoch, step) only, so the data position of a checkpoint is its
step number, and one process with batch B sees exactly the pairs that P processes with B/P each
see together: step s takes the s-th global batch of the epoch's permutation, and micro-batch j of
process r is its slice (j * P + r). Augmentation is seeded per pair by (seed, epoch, index), so it
too is the same for any number of processes or DataLoader workers, and after a resume.
"""

import torch

__all__ = ["PairBatches", "StreamingPairBatches", "ShardPairBatches", "collate_pairs"]


def _pair_seed(seed: int, group: int, index: int) -> int:
    """Augmentation seed of a pair: (run seed, epoch or rank stream, index within it)."""
    return (seed * 100_003 + group) * 1_000_003 + index


def _augmented(augmentation, image, seed: int):
    # Seeded per pair, outside the global RNG: the same pair gets the same augmentation whatever the
    # number of processes or workers, and after a resume; dropout's RNG stream is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return augmentation(image)


def collate_pairs(rows: list[dict], processor, image_column: str, caption_column: str, augmentation=None,
                  seeds: list[int] | None = None) -> dict:
    """Rows with a PIL image and a caption -> processor tensors (pixel_values (b,3,S,S), input_ids (b,L), ...).

    seeds: one augmentation seed per row (None: the augmentation draws from the global RNG).
    """
    images, captions = [], []
    for n, row in enumerate(rows):
        image, caption = row.get(image_column), row.get(caption_column)
        if image is None or not hasattr(image, "convert"):
            raise ValueError(
                f"Row {row.get('__index__', '?')} has no decodable image in column {image_column!r} "
                f"(got {type(image).__name__}); filter broken rows out first (wukong data commands do this)."
            )
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(
                f"Row {row.get('__index__', '?')} has no caption text in column {caption_column!r} "
                f"(got {caption!r}); filter empty captions out first."
            )
        image = image.convert("RGB")
        if augmentation is not None:
            image = augmentation(image) if seeds is None else _augmented(augmentation, image, seeds[n])
        images.append(image)
        captions.append(caption)
    batch = dict(processor(text=captions, images=images))
    batch["indices"] = [row.get("__index__", -1) for row in rows]
    return batch


class PairBatches(torch.utils.data.Dataset):
    """Map-style source: item `step` = the k micro-batches of this process for that optimiser step.

    dataset: a datasets.Dataset (or anything with __len__ and __getitem__(int) -> row dict).
    """

    def __init__(self, dataset, processor, *, micro_batch: int, accumulation: int, rank: int, world_size: int,
                 seed: int, shuffle: bool, image_column: str, caption_column: str, augmentation=None,
                 total_steps: int | None = None):
        self.dataset, self.processor = dataset, processor
        self.micro_batch, self.accumulation, self.rank, self.world_size = micro_batch, accumulation, rank, world_size
        self.seed, self.shuffle, self.augmentation = seed, shuffle, augmentation
        self.image_column, self.caption_column = image_column, caption_column
        self.global_batch = micro_batch * accumulation * world_size
        self.steps_per_epoch = len(dataset) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"The training set has {len(dataset)} pairs, fewer than one global batch of {self.global_batch} "
                f"(loop.batch_size {micro_batch} x accumulation {accumulation} x {world_size} processes); "
                "lower loop.batch_size or add data."
            )
        self.total_steps = total_steps or self.steps_per_epoch
        self._order_epoch, self._order = None, None

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if self._order_epoch != epoch:
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                self._order = torch.randperm(len(self.dataset), generator=generator)
            else:
                self._order = torch.arange(len(self.dataset))
            self._order_epoch = epoch
        return self._order

    def indices(self, step: int) -> list[list[int]]:
        """Dataset indices of this process's k micro-batches at `step` (epochs wrap around)."""
        epoch, position = divmod(step, self.steps_per_epoch)
        chunk = self._epoch_order(epoch)[position * self.global_batch:(position + 1) * self.global_batch].tolist()
        b, world = self.micro_batch, self.world_size
        return [chunk[(j * world + self.rank) * b:(j * world + self.rank + 1) * b] for j in range(self.accumulation)]

    def __len__(self) -> int:
        return self.total_steps

    def __getitem__(self, step: int) -> list[dict]:
        micro = []
        epoch = step // self.steps_per_epoch
        for idx in self.indices(step):
            rows = [dict(self.dataset[i], __index__=i) for i in idx]
            seeds = [_pair_seed(self.seed, epoch, i) for i in idx]
            micro.append(collate_pairs(rows, self.processor, self.image_column, self.caption_column, self.augmentation,
                                       seeds))
        return micro


class StreamingPairBatches(torch.utils.data.IterableDataset):
    """Iterable source (datasets.IterableDataset, streamed): this process's shard, consumed in order.

    Resuming skips the `start_step * k * b` pairs this process already used.
    """

    def __init__(self, dataset, processor, *, micro_batch: int, accumulation: int, rank: int, world_size: int,
                 start_step: int, image_column: str, caption_column: str, augmentation=None, seed: int = 0):
        from datasets.distributed import split_dataset_by_node

        per_step = micro_batch * accumulation
        self.dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size).skip(start_step * per_step)
        # Augmentation seed of the n-th pair of this rank's stream (the same after a resume).
        self.first_seed = _pair_seed(seed, rank, start_step * per_step)
        self.processor, self.micro_batch, self.accumulation = processor, micro_batch, accumulation
        self.image_column, self.caption_column, self.augmentation = image_column, caption_column, augmentation

    def __iter__(self):
        rows, micro = [], []
        for n, row in enumerate(self.dataset):
            rows.append(row)
            if len(rows) == self.micro_batch:
                seeds = list(range(self.first_seed + n + 1 - len(rows), self.first_seed + n + 1))
                micro.append(collate_pairs(rows, self.processor, self.image_column, self.caption_column,
                                           self.augmentation, seeds))
                rows = []
                if len(micro) == self.accumulation:
                    yield micro
                    micro = []


class ShardPairBatches:
    """WebDataset shards through `wukong_hf.data.build_train_loader`: this process's stream, k micro-batches
    of b pairs per optimiser step, in order (one pass over the shards).

    Ranks take whole shards (see the loader). Resuming skips the `start_step * k * b` samples this process
    already read. image_column / caption_column None: the loader finds jpg/png and txt/caption itself.
    A micro-batch can come out short when an image fails to decode (the loader skips it with a warning).
    """

    def __init__(self, shards: str, processor, *, micro_batch: int, accumulation: int, rank: int, world_size: int,
                 start_step: int, seed: int, augment: bool, num_workers: int = 0, image_column: str | None = None,
                 caption_column: str | None = None):
        from ..data.train_loader import build_train_loader

        self.accumulation = accumulation
        self.loader = build_train_loader(
            shards, processor, micro_batch, rank=rank, world_size=world_size, num_workers=num_workers,
            augment=augment, start_sample=start_step * micro_batch * accumulation, seed=seed, drop_last=True,
            image_column=image_column, caption_column=caption_column,
        )

    def __iter__(self):
        micro = []
        for batch in self.loader:
            micro.append(batch)
            if len(micro) == self.accumulation:
                yield micro
                micro = []
