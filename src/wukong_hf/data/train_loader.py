"""Training loader: WebDataset shards or a `datasets` stream -> model-ready batches.

Split, in order: ranks take whole shards (shard i goes to rank i % world_size; with fewer shards
than ranks, samples i % world_size instead). Inside a rank the sample stream is cut into batches;
batch j is decoded by DataLoader worker j % num_workers, so the DataLoader (which reads workers
round-robin) returns the rank's batches in stream order whatever num_workers is. Resuming at
`start_sample` (samples this rank has already consumed) therefore yields exactly the rest.
Each worker reads the rank's raw bytes but decodes only its own batches (reading is cheap, decoding is not).
"""

from __future__ import annotations

import glob
import io
import logging
import os
import random
from collections.abc import Iterator
from itertools import islice

import torch

__all__ = ["build_train_loader", "WukongTrainStream", "IMAGE_COLUMNS", "CAPTION_COLUMNS"]

IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "image")
CAPTION_COLUMNS = ("txt", "caption", "text")
logger = logging.getLogger(__name__)


def _pick(sample: dict, names: tuple[str, ...], what: str, requested: str | None):
    if requested is not None:
        if requested not in sample:
            raise ValueError(f"{what} column {requested!r} not in sample columns {sorted(sample)}")
        return sample[requested]
    for name in names:
        if name in sample:
            return sample[name]
    raise ValueError(f"no {what} column among {names} in sample columns {sorted(sample)}; pass {what}_column=")


def _shard_files(source) -> list[str]:
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    files: list[str] = []
    for item in map(os.fspath, items):
        found = sorted(glob.glob(os.path.join(item, "*.tar"))) if os.path.isdir(item) else sorted(glob.glob(item))
        if not found:
            raise FileNotFoundError(f"no .tar shards at {item!r}; pass the folder written by `wukong data download` or a glob of .tar files")
        files.extend(found)
    return files


class WukongTrainStream(torch.utils.data.IterableDataset):
    """Iterable of batches {input_ids (B,L), attention_mask (B,L), pixel_values (B,3,S,S)} for one rank.

    Use through `build_train_loader`, which wraps it in a DataLoader(batch_size=None).
    """

    def __init__(self, source, processor, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 augment: bool = True, start_sample: int = 0, seed: int = 0, shuffle_buffer: int = 1000,
                 image_column: str | None = None, caption_column: str | None = None, drop_last: bool = False):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if start_sample < 0:
            raise ValueError(f"start_sample must be >= 0, got {start_sample}")
        self.is_shards = isinstance(source, (str, os.PathLike, list, tuple))
        self.source = _shard_files(source) if self.is_shards else source
        self.processor, self.batch_size = processor, batch_size
        self.rank, self.world_size = rank, world_size
        self.augment, self.start_sample, self.seed = augment, start_sample, seed
        self.shuffle_buffer, self.drop_last = shuffle_buffer, drop_last
        self.image_column, self.caption_column = image_column, caption_column
        self.image_size = processor.image_processor.crop_size["height"]
        self.transform = self._build_transform() if augment else None

    def _build_transform(self):
        from torchvision.transforms import v2

        # Paper Table 4: AutoAugment on images; the random crop gives it scale variety.
        return v2.Compose([
            v2.RandomResizedCrop(self.image_size, scale=(0.5, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET),
        ])

    def _raw_samples(self) -> Iterator[dict]:
        """This rank's undecoded samples in a deterministic order (a function of seed only)."""
        if not self.is_shards:
            from datasets import Image
            from datasets.distributed import split_dataset_by_node

            ds = self.source
            for name, feature in (ds.features or {}).items():
                if isinstance(feature, Image) and feature.decode:
                    ds = ds.cast_column(name, Image(decode=False))  # decode in our workers, not in datasets
            ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
            # .iter() rather than __iter__: datasets would otherwise re-split the stream across workers.
            for batch in ds.iter(batch_size=1):
                yield {k: v[0] for k, v in batch.items()}
            return
        from webdataset.tariterators import tarfile_samples

        files = list(self.source)
        random.Random(self.seed).shuffle(files)
        by_shard = len(files) >= self.world_size
        mine = files[self.rank :: self.world_size] if by_shard else files
        samples = tarfile_samples([{"url": f} for f in mine])
        if not by_shard:
            samples = islice(samples, self.rank, None, self.world_size)
        if self.shuffle_buffer <= 1:
            yield from samples
            return
        rng, buffer = random.Random(self.seed * 1_000_003 + self.rank), []
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    def _decode(self, image, caption, index: int):
        from PIL import Image

        if isinstance(image, dict):  # datasets Image(decode=False): {"bytes", "path"}
            image = image["bytes"] if image.get("bytes") is not None else open(image["path"], "rb").read()
        if isinstance(caption, bytes):
            caption = caption.decode("utf-8")
        if isinstance(image, bytes):
            image = Image.open(io.BytesIO(image))
            image.draft("RGB", (self.image_size, self.image_size))
        image = image.convert("RGB")
        if self.transform is not None:
            torch.manual_seed(self.seed * 1_000_003 + index)  # per-sample seed: the same augmentation after a resume
            image = self.transform(image)
        return image, caption

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        stream = islice(self._raw_samples(), self.start_sample, None)
        index = self.start_sample
        batch_no = 0
        while raw := list(islice(stream, self.batch_size)):
            first, index = index, index + len(raw)
            mine = batch_no % num_workers == worker
            batch_no += 1
            if not mine or (self.drop_last and len(raw) < self.batch_size):
                continue
            images, captions = [], []
            for offset, sample in enumerate(raw):
                # A missing column is a configuration error (raise); a broken image is one bad sample (skip).
                image = _pick(sample, IMAGE_COLUMNS, "image", self.image_column)
                caption = _pick(sample, CAPTION_COLUMNS, "caption", self.caption_column)
                try:
                    image, caption = self._decode(image, caption, first + offset)
                except (OSError, ValueError, SyntaxError) as err:
                    logger.warning("skipping undecodable sample %s: %s", sample.get("__key__", first + offset), err)
                    continue
                images.append(image)
                captions.append(caption)
            if images:
                yield dict(self.processor(text=captions, images=images))


def build_train_loader(source, processor, batch_size: int, *, rank: int = 0, world_size: int = 1,
                       num_workers: int = 0, augment: bool = True, start_sample: int = 0, seed: int = 0,
                       **stream_options) -> torch.utils.data.DataLoader:
    """Model-ready training batches from shards or a `datasets` stream.

    source: a folder of WebDataset .tar shards, a glob, a list of .tar paths, or a datasets
    (Iterable)Dataset with an image column (jpg/png/image) and a caption column (txt/caption/text).
    processor: WukongProcessor (tokenises to its max_length, normalises images).
    rank / world_size: this process's share (no overlap between ranks); num_workers: DataLoader workers.
    augment: RandomResizedCrop + AutoAugment (ImageNet policy), seeded per sample.
    start_sample: samples of this rank's stream already consumed (e.g. steps_done * batch_size) to resume.
    Yields dicts {input_ids (B,L) long, attention_mask (B,L) long, pixel_values (B,3,S,S) float}.
    stream_options: shuffle_buffer (1000), image_column, caption_column, drop_last (False).
    """
    stream = WukongTrainStream(source, processor, batch_size, rank=rank, world_size=world_size, augment=augment,
                               start_sample=start_sample, seed=seed, **stream_options)
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers)
