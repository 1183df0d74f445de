"""Training loader: model-ready batches; ranks and workers without overlap; exact resume at a sample offset."""

import pytest
import torch
from test_data_repository import write_shards

from wukong_hf import WukongProcessor
from wukong_hf.data.repository import prepare_dataset_repo
from wukong_hf.data.train_loader import build_train_loader


@pytest.fixture(scope="module")
def processor():
    return WukongProcessor.from_defaults(image_size=32)


@pytest.fixture
def shards(tmp_path):
    write_shards(tmp_path / "shards", n_shards=4, per_shard=5)
    return tmp_path / "shards"


def rows(loader):
    """Every sample of a loader as a tuple of its token ids, in order."""
    return [tuple(ids.tolist()) for batch in loader for ids in batch["input_ids"]]


def test_batches_are_model_ready(shards, processor):
    batch = next(iter(build_train_loader(shards, processor, 4)))
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values"}
    assert batch["input_ids"].shape == (4, 32) and batch["attention_mask"].shape == (4, 32)
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert (batch["input_ids"][:, 0] == 101).all()


def test_ranks_split_without_overlap(shards, processor):
    every = rows(build_train_loader(shards, processor, 3, augment=False))
    assert len(every) == 20 and len(set(every)) == 20
    for world_size in (2, 3, 8):  # 8 > 4 shards: falls back to splitting samples
        parts = [rows(build_train_loader(shards, processor, 3, rank=r, world_size=world_size, augment=False)) for r in range(world_size)]
        assert sorted(sum(parts, [])) == sorted(every)


def test_workers_keep_the_stream_order(shards, processor):
    single = rows(build_train_loader(shards, processor, 3, augment=False))
    assert rows(build_train_loader(shards, processor, 3, num_workers=2, augment=False)) == single


def test_resume_at_sample_offset(shards, processor):
    full = list(build_train_loader(shards, processor, 2, augment=True, seed=3))
    resumed = list(build_train_loader(shards, processor, 2, augment=True, seed=3, start_sample=6, num_workers=2))
    assert len(resumed) == len(full) - 3
    for a, b in zip(full[3:], resumed):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    other_seed = next(iter(build_train_loader(shards, processor, 2, augment=True, seed=4)))
    assert not torch.equal(other_seed["input_ids"], full[0]["input_ids"])  # the seed reorders the stream


def test_datasets_stream_source(shards, tmp_path, processor):
    from datasets import load_dataset

    prepare_dataset_repo(tmp_path / "repo", shards_dir=shards)
    ds = load_dataset(str(tmp_path / "repo"), name="images", split="train", streaming=True)
    every = rows(build_train_loader(ds, processor, 4, augment=False))
    assert len(every) == 20
    parts = [rows(build_train_loader(ds, processor, 4, rank=r, world_size=2, num_workers=2, augment=False)) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == sorted(every) and not set(parts[0]) & set(parts[1])
    assert rows(build_train_loader(ds, processor, 4, augment=False, start_sample=8)) == every[8:]


def test_bad_arguments_messages(tmp_path, shards, processor):
    with pytest.raises(ValueError, match="need 0 <= rank < world_size"):
        build_train_loader(shards, processor, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        build_train_loader(shards, processor, 0)
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        build_train_loader(tmp_path / "nothing", processor, 2)
    with pytest.raises(ValueError, match=r"no column 'title' \(columns: \['jpg', 'json', 'txt'\]\); set data.caption_column"):
        next(iter(build_train_loader(shards, processor, 2, caption_column="title")))


def test_corrupt_image_is_skipped_and_logged(tmp_path, processor, caplog):
    import webdataset as wds

    write_shards(tmp_path / "shards", n_shards=1, per_shard=3)
    with wds.TarWriter(str(tmp_path / "shards" / "00001.tar")) as writer:
        writer.write({"__key__": "broken", "jpg": b"\xff\xd8 not really a jpeg", "txt": "坏图"})
    loaded = rows(build_train_loader(tmp_path / "shards", processor, 8, augment=False))
    assert len(loaded) == 3
    assert "skipping unusable training pair broken: undecodable image in column 'jpg'" in caplog.text
