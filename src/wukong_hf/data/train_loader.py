"""The one training data pipeline: (image, caption) pairs from any source -> model-ready batches.

Sources: a `datasets.Dataset` (map-style, `MapPairSteps`), a streamed `datasets.IterableDataset` or
WebDataset `.tar` shards (`WukongTrainStream`). Every pair, whatever its source, goes through the
same steps in `PairEncoder`:

1. Columns (`resolve_columns`): the image and caption columns are the names given, or else the first
   of IMAGE_COLUMNS / CAPTION_COLUMNS the data has ("image"/"caption" in `datasets`, "jpg"/"txt" in
   WebDataset shards). A named column the data lacks is a configuration error (raised at once).
2. Decoding (`decode_pair`): the stored image (PIL image, {"bytes", "path"}, bytes or a path) -> RGB
   PIL image (JPEGs decoded at reduced size when that still covers the model's input: PIL draft
   mode); the caption -> text.
3. Bad pairs: a pair whose image is missing or undecodable, or whose caption is missing or empty, is
   skipped and counted (the batch's "skipped" entry; the training loop logs the running total), and the
   first few are logged with their reason. A micro-batch left with no usable pair stops the run with
   TrainingDataError (that is a wrong column or broken data, not a few bad files).
4. Augmentation (`SeededAutoAugment`), the paper's (Table 4 lists AutoAugment): torchvision AutoAugment,
   ImageNet policy, on the decoded image; then the processor's resize, centre crop and normalisation.
5. The processor: input_ids (B, L), attention_mask (B, L), pixel_values (B, 3, S, S).

Order. Map-style: the order is a function of (seed, epoch, step): step s takes the s-th global batch of
the epoch's permutation and micro-batch j of process r is its slice j * P + r, so one process with batch
B sees exactly the pairs P processes with B / P see together, and a checkpoint's step is its data
position. Streams: ranks take whole shards (shard i -> rank i % P; with fewer shards than ranks,
samples i % P; a `datasets` stream through `split_dataset_by_node`), a seeded shuffle buffer orders the
rank's stream, and `start_sample` skips what the rank already used. Stream unit j (one step of k
micro-batches) is decoded by DataLoader worker j % W, so units come out in stream order whatever W is.

The one RNG rule: a pair's augmentation is seeded by `pair_seed(seed, stream, position)`: map-style
(epoch, dataset index), streams (rank, position in the rank's stream), the same for any number of
DataLoader workers and after a resume, and for map-style data for any number of processes. It runs
under `torch.random.fork_rng`, and the DataLoader gets a private generator (its iterator otherwise
draws a seed from the global RNG), so the global RNG that dropout uses is never touched.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import random
from collections.abc import Iterator, Sequence
from itertools import islice

import torch
from torchvision.transforms import AutoAugment, AutoAugmentPolicy

__all__ = [
    "build_train_loader",
    "WukongTrainStream",
    "MapPairSteps",
    "PairEncoder",
    "SeededAutoAugment",
    "TrainingDataError",
    "UnusablePair",
    "decode_pair",
    "resolve_columns",
    "pair_seed",
    "IMAGE_COLUMNS",
    "CAPTION_COLUMNS",
    "MODEL_INPUTS",
]

IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp")
CAPTION_COLUMNS = ("caption", "txt", "text")
MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values")
LOGGED_BAD_PAIRS = 5  # per process (and DataLoader worker); later ones are only counted
logger = logging.getLogger(__name__)


class UnusablePair(ValueError):
    """One pair that cannot be trained on (missing/undecodable image, missing/empty caption); skipped."""


class TrainingDataError(ValueError):
    """The training data cannot be used as configured; the message says what and what to do."""


def pair_seed(seed: int, stream: int, position: int) -> int:
    """Augmentation seed of a pair: (run seed, epoch or rank, index within it)."""
    return (seed * 100_003 + stream) * 1_000_003 + position


def resolve_columns(names: Sequence[str], image_column: str | None = None,
                    caption_column: str | None = None) -> tuple[str, str]:
    """(image column, caption column) of data with columns `names`: the names given, or the first of
    IMAGE_COLUMNS / CAPTION_COLUMNS present. Raises TrainingDataError naming the columns the data has."""
    names = [n for n in names if not n.startswith("__")]

    def pick(requested, candidates, what):
        if requested is not None:
            if requested not in names:
                raise TrainingDataError(f"The training data has no column {requested!r} (columns: {sorted(names)}); "
                                        f"set data.{what}_column to the column that holds the {what}s.")
            return requested
        found = next((c for c in candidates if c in names), None)
        if found is None:
            raise TrainingDataError(f"The training data has no {what} column (looked for {', '.join(candidates)}; "
                                    f"columns: {sorted(names)}); set data.{what}_column.")
        return found

    return pick(image_column, IMAGE_COLUMNS, "image"), pick(caption_column, CAPTION_COLUMNS, "caption")


def decode_pair(row: dict, image_column: str, caption_column: str, draft_size: int | None = None):
    """(RGB PIL image, caption str) of a row; raises UnusablePair with the reason.

    row[image_column]: PIL image, {"bytes", "path"} (datasets Image(decode=False)), bytes or a file path.
    draft_size: decode JPEGs at the smallest scale that still covers draft_size x draft_size.
    """
    from PIL import Image

    caption = row.get(caption_column)
    if isinstance(caption, bytes):
        try:
            caption = caption.decode("utf-8")
        except UnicodeDecodeError:
            raise UnusablePair(f"caption in column {caption_column!r} is not UTF-8 text") from None
    if not isinstance(caption, str) or not caption.strip():
        raise UnusablePair(f"no caption text in column {caption_column!r} (got {str(caption)[:40]!r})")
    image = row.get(image_column)
    try:
        if isinstance(image, dict):  # datasets Image(decode=False)
            image = image.get("bytes") or image.get("path")
        if isinstance(image, (str, os.PathLike)):
            image = _read_file(image)
        if isinstance(image, bytes):
            image = Image.open(io.BytesIO(image))
            if draft_size:
                image.draft("RGB", (draft_size, draft_size))
        if not hasattr(image, "convert"):
            raise UnusablePair(f"no image in column {image_column!r} (got {type(image).__name__})")
        return image.convert("RGB"), caption
    except UnusablePair:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnusablePair(f"undecodable image in column {image_column!r} ({type(err).__name__}: {err})") from None


def _read_file(path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


class SeededAutoAugment(AutoAugment):
    """The paper's augmentation (Table 4: AutoAugment): torchvision AutoAugment, ImageNet policy, on PIL images.

    `seeded(image, seed)` applies it with the pair's own seed under `fork_rng`: the same pair gets the same
    augmentation whatever the number of processes or workers and after a resume, and the global RNG
    (dropout's) is left where it was. Calling the object directly draws from the global RNG (torchvision's).
    """

    def __init__(self):
        super().__init__(AutoAugmentPolicy.IMAGENET)

    def seeded(self, image, seed: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self(image)


class PairEncoder:
    """Pairs -> one model-ready micro-batch: decode (skipping unusable pairs), augment, processor.

    processor: WukongProcessor. image_column / caption_column: None finds them (see resolve_columns).
    augment: apply SeededAutoAugment with each pair's seed.
    """

    def __init__(self, processor, image_column: str | None = None, caption_column: str | None = None,
                 augment: bool = True):
        self.processor = processor
        self.requested = (image_column, caption_column)
        self.columns: tuple[str, str] | None = None
        self.augmentation = SeededAutoAugment() if augment else None
        self.draft_size = processor.image_processor.crop_size["height"]
        self.skipped = 0  # in this process / worker

    def resolve(self, names: Sequence[str]) -> tuple[str, str]:
        self.columns = resolve_columns(names, *self.requested)
        return self.columns

    def __call__(self, pairs: list[tuple[int, int, dict]]) -> dict:
        """pairs: (index, augmentation seed, row). Returns the processor's tensors plus "indices" (list of
        the used pairs' indices) and "skipped" (how many pairs of this micro-batch could not be used)."""
        if self.columns is None:
            self.resolve(list(pairs[0][2]))
        images, captions, indices, reasons = [], [], [], []
        for index, seed, row in pairs:
            try:
                image, caption = decode_pair(row, *self.columns, self.draft_size)
            except UnusablePair as err:
                reasons.append(str(err))
                self._log_skip(row.get("__key__", index), err)
                continue
            if self.augmentation is not None:
                image = self.augmentation.seeded(image, seed)
            images.append(image)
            captions.append(caption)
            indices.append(index)
        if not images:
            raise TrainingDataError(
                f"No usable pair in a micro-batch of {len(pairs)} (first reason: {reasons[0]}); the data is broken or "
                "misconfigured: check data.image_column / data.caption_column, or filter unusable pairs out first "
                "(the wukong data commands do)."
            )
        batch = dict(self.processor(text=captions, images=images))
        batch["indices"] = indices
        batch["skipped"] = len(reasons)
        return batch

    def _log_skip(self, key, err) -> None:
        self.skipped += 1
        if self.skipped <= LOGGED_BAD_PAIRS:
            more = "; later ones are counted, not logged" if self.skipped == LOGGED_BAD_PAIRS else ""
            logger.warning("skipping unusable training pair %s: %s%s", key, err, more)


def undecoded(dataset):
    """The dataset with its datasets.Image columns read as {"bytes", "path"}: decoding happens in decode_pair."""
    features = getattr(dataset, "features", None)
    if not features:
        return dataset
    from datasets import Image

    for name, feature in features.items():
        if isinstance(feature, Image) and feature.decode:
            dataset = dataset.cast_column(name, Image(decode=False))
    return dataset


class MapPairSteps(torch.utils.data.Dataset):
    """Map-style source: item `step` = this process's `accumulation` micro-batches for that optimiser step.

    dataset: a datasets.Dataset (or anything with __len__ and __getitem__(int) -> row dict).
    encoder: PairEncoder. Epochs wrap around: step s is in epoch s // steps_per_epoch.
    """

    def __init__(self, dataset, encoder: PairEncoder, *, micro_batch: int, accumulation: int, rank: int,
                 world_size: int, seed: int, shuffle: bool, total_steps: int | None = None):
        self.dataset, self.encoder = undecoded(dataset), encoder
        self.micro_batch, self.accumulation, self.rank, self.world_size = micro_batch, accumulation, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.global_batch = micro_batch * accumulation * world_size
        self.steps_per_epoch = len(dataset) // self.global_batch
        if self.steps_per_epoch == 0:
            raise TrainingDataError(
                f"The training set has {len(dataset)} pairs, fewer than one global batch of {self.global_batch} "
                f"(loop.batch_size {micro_batch} x accumulation {accumulation} x {world_size} processes); "
                "lower loop.batch_size or add data."
            )
        names = getattr(self.dataset, "column_names", None)
        if names is not None:
            encoder.resolve(names)
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
        """Dataset indices of this process's micro-batches at `step`."""
        epoch, position = divmod(step, self.steps_per_epoch)
        chunk = self._epoch_order(epoch)[position * self.global_batch:(position + 1) * self.global_batch].tolist()
        b, world = self.micro_batch, self.world_size
        return [chunk[(j * world + self.rank) * b:(j * world + self.rank + 1) * b] for j in range(self.accumulation)]

    def __len__(self) -> int:
        return self.total_steps

    def __getitem__(self, step: int) -> list[dict]:
        epoch = step // self.steps_per_epoch
        return [self.encoder([(i, pair_seed(self.seed, epoch, i), self.dataset[i]) for i in idx])
                for idx in self.indices(step)]


def _shard_files(source) -> list[str]:
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    files: list[str] = []
    for item in map(os.fspath, items):
        found = sorted(glob.glob(os.path.join(item, "*.tar"))) if os.path.isdir(item) else sorted(glob.glob(item))
        if not found:
            raise FileNotFoundError(f"no .tar shards at {item!r}; pass the folder written by `wukong data download` "
                                    "or a glob of .tar files")
        files.extend(found)
    return files


class WukongTrainStream(torch.utils.data.IterableDataset):
    """Streamed source (WebDataset shards or a datasets stream) for one rank: units of `accumulation`
    micro-batches of `batch_size` pairs in stream order (a list per unit when as_steps, else the batch).

    Use through `build_train_loader` (micro-batches) or the training loop (steps).
    """

    def __init__(self, source, encoder: PairEncoder, batch_size: int, *, accumulation: int = 1, rank: int = 0,
                 world_size: int = 1, start_sample: int = 0, seed: int = 0, shuffle_buffer: int = 1000,
                 drop_last: bool = False, as_steps: bool = False, model_inputs_only: bool = False):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if start_sample < 0:
            raise ValueError(f"start_sample must be >= 0, got {start_sample}")
        self.is_shards = isinstance(source, (str, os.PathLike, list, tuple))
        self.source = _shard_files(source) if self.is_shards else undecoded(source)
        if not self.is_shards and getattr(self.source, "column_names", None):
            encoder.resolve(self.source.column_names)
        self.encoder, self.batch_size, self.accumulation = encoder, batch_size, accumulation
        self.rank, self.world_size = rank, world_size
        self.start_sample, self.seed = start_sample, seed
        self.shuffle_buffer, self.drop_last = shuffle_buffer, drop_last
        self.as_steps, self.model_inputs_only = as_steps, model_inputs_only

    def _rank_samples(self) -> Iterator[dict]:
        if not self.is_shards:
            from datasets.distributed import split_dataset_by_node

            ds = split_dataset_by_node(self.source, rank=self.rank, world_size=self.world_size)
            # .iter() rather than __iter__: datasets would otherwise re-split the stream across workers.
            for batch in ds.iter(batch_size=1):
                yield {k: v[0] for k, v in batch.items()}
            return
        from webdataset.tariterators import tarfile_samples

        files = list(self.source)
        if self.shuffle_buffer > 1:  # shuffling on: the shard order too
            random.Random(self.seed).shuffle(files)
        by_shard = len(files) >= self.world_size
        mine = files[self.rank::self.world_size] if by_shard else files
        samples = tarfile_samples([{"url": f} for f in mine])
        yield from samples if by_shard else islice(samples, self.rank, None, self.world_size)

    def _ordered(self) -> Iterator[dict]:
        """This rank's raw samples in a deterministic order (a function of the seed only)."""
        samples = self._rank_samples()
        if self.shuffle_buffer <= 1:
            yield from samples
            return
        rng, buffer = random.Random(self.seed * 1_000_003 + self.rank), []  # private: never the global RNG
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        stream = islice(self._ordered(), self.start_sample, None)
        position, unit = self.start_sample, 0
        per_unit = self.batch_size * self.accumulation
        while raw := list(islice(stream, per_unit)):
            first, position = position, position + len(raw)
            mine, unit = unit % num_workers == worker, unit + 1
            if not mine or ((self.drop_last or self.as_steps) and len(raw) < per_unit):
                continue
            micro = []
            for start in range(0, len(raw), self.batch_size):
                chunk = raw[start:start + self.batch_size]
                pairs = [(first + start + n, pair_seed(self.seed, self.rank, first + start + n), row)
                         for n, row in enumerate(chunk)]
                batch = self.encoder(pairs)
                micro.append({k: batch[k] for k in MODEL_INPUTS} if self.model_inputs_only else batch)
            if self.as_steps:
                yield micro
            else:
                yield from micro


def private_generator(seed: int) -> torch.Generator:
    """A DataLoader's own generator: iter(DataLoader) then draws its base seed from it, not from the
    global RNG (that draw would shift dropout's stream after a resume)."""
    return torch.Generator().manual_seed(seed)


def build_train_loader(source, processor, batch_size: int, *, rank: int = 0, world_size: int = 1,
                       num_workers: int = 0, augment: bool = True, start_sample: int = 0, seed: int = 0,
                       shuffle_buffer: int = 1000, image_column: str | None = None, caption_column: str | None = None,
                       drop_last: bool = False) -> torch.utils.data.DataLoader:
    """Model-ready training micro-batches from WebDataset shards or a `datasets` stream (see the module doc).

    source: a folder of WebDataset .tar shards, a glob, a list of .tar paths, or a datasets
    (Iterable)Dataset. processor: WukongProcessor (tokenises to its max_length, normalises images).
    rank / world_size: this process's share (no overlap between ranks); num_workers: DataLoader workers.
    augment: SeededAutoAugment, seeded per pair. start_sample: samples of this rank's stream already used
    (e.g. steps_done * batch_size) to resume. image_column / caption_column: None finds them.
    Yields dicts {input_ids (B,L) long, attention_mask (B,L) long, pixel_values (B,3,S,S) float}; B can be
    smaller than batch_size when unusable pairs were skipped (logged).
    """
    stream = WukongTrainStream(source, PairEncoder(processor, image_column, caption_column, augment), batch_size,
                               rank=rank, world_size=world_size, start_sample=start_sample, seed=seed,
                               shuffle_buffer=shuffle_buffer, drop_last=drop_last, model_inputs_only=True)
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers,
                                       generator=private_generator(seed))
