"""The one training data pipeline, checked source by source (map-style datasets, datasets streams, WebDataset
shards): the paper's AutoAugment and nothing else (against torchvision itself), one RNG rule that leaves the
global RNG alone, one bad-pair policy with a logged counter, and one dataset opener for training and evaluation."""

import io

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from test_training_run import tiny_config
from torchvision.transforms import AutoAugment, AutoAugmentPolicy

from wukong_hf import WukongProcessor
from wukong_hf.data.train_loader import (
    MapPairSteps,
    PairEncoder,
    TrainingDataError,
    build_train_loader,
    pair_seed,
)
from wukong_hf.training import train

CAPTIONS = ["红色的猫", "绿色的树", "蓝色的天空", "黄色的花", "白色的雪", "黑色的夜", "紫色的葡萄", "灰色的石头"]


def png_bytes(i: int, size=(40, 30)) -> bytes:
    rng = np.random.default_rng(i)
    buffer = io.BytesIO()
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")).save(buffer, format="PNG")
    return buffer.getvalue()


def pairs_dataset(n: int, bad: dict[int, str] | None = None) -> datasets.Dataset:
    """n pairs (PNG image, caption); bad: index -> "image" (undecodable bytes) or "caption" (empty)."""
    bad = bad or {}
    images = [{"bytes": b"\x89PNG broken" if bad.get(i) == "image" else png_bytes(i), "path": None} for i in range(n)]
    captions = ["" if bad.get(i) == "caption" else CAPTIONS[i % len(CAPTIONS)] for i in range(n)]
    return datasets.Dataset.from_dict({"image": images, "caption": captions}).cast_column("image", datasets.Image())


def write_pair_shards(folder, n: int, per_shard: int = 4, bad: dict[int, str] | None = None) -> None:
    """The same pairs as pairs_dataset, as WebDataset shards (png + txt), in order."""
    import webdataset as wds

    bad = bad or {}
    folder.mkdir(parents=True)
    for shard in range(0, n, per_shard):
        with wds.TarWriter(str(folder / f"{shard // per_shard:05d}.tar")) as writer:
            for i in range(shard, min(n, shard + per_shard)):
                writer.write({"__key__": f"{i:06d}", "png": b"\x89PNG broken" if bad.get(i) == "image" else png_bytes(i),
                              "txt": "" if bad.get(i) == "caption" else CAPTIONS[i % len(CAPTIONS)]})


@pytest.fixture(scope="module")
def processor():
    return WukongProcessor.from_defaults(image_size=32)


def torchvision_expected(processor, index: int, seed: int) -> torch.Tensor:
    """What the paper's augmentation gives pair `index` with augmentation seed `seed`: torchvision's own
    AutoAugment (ImageNet policy) on the decoded image, then the processor (resize, centre crop, normalise)."""
    image = Image.open(io.BytesIO(png_bytes(index))).convert("RGB")
    torch.manual_seed(seed)
    augmented = AutoAugment(AutoAugmentPolicy.IMAGENET)(image)
    return processor(images=[augmented], return_tensors="pt")["pixel_values"][0]


def source_batches(kind: str, tmp_path, processor, n: int = 8, bad=None) -> list[dict]:
    """Micro-batches of 4 from one source, augmentation on, seed 3, stored order (no shuffling)."""
    if kind == "map-style":
        steps = MapPairSteps(pairs_dataset(n, bad), PairEncoder(processor, augment=True), micro_batch=4,
                             accumulation=1, rank=0, world_size=1, seed=3, shuffle=False)
        return [micro for step in range(len(steps)) for micro in steps[step]]
    if kind == "datasets stream":
        source = pairs_dataset(n, bad).to_iterable_dataset()
    else:
        write_pair_shards(tmp_path / "shards", n, bad=bad)
        source = tmp_path / "shards"
    return list(build_train_loader(source, processor, 4, augment=True, seed=3, shuffle_buffer=0))


SOURCES = ["map-style", "datasets stream", "shards"]


@pytest.mark.parametrize("kind", SOURCES)
def test_every_source_applies_the_papers_autoaugment_and_nothing_else(kind, tmp_path, processor):
    """Pair i's pixels = torchvision AutoAugment(ImageNet) seeded by pair_seed(seed, stream, position), then the
    processor: no random crop, the same definition for every source (the shard loader used to add one)."""
    batches = source_batches(kind, tmp_path, processor)
    pixels = torch.cat([b["pixel_values"] for b in batches])
    assert pixels.shape == (8, 3, 32, 32)
    for i in range(8):  # stored order: map-style position = dataset index (epoch 0); streams: rank 0, position i
        assert torch.equal(pixels[i], torchvision_expected(processor, i, pair_seed(3, 0, i))), f"pair {i}"
    assert not torch.equal(pixels[0], torchvision_expected(processor, 0, pair_seed(4, 0, 0)))  # the seed matters


@pytest.mark.parametrize("kind", SOURCES)
def test_no_source_touches_the_global_rng(kind, tmp_path, processor):
    """Building and iterating any loader, augmentation on, leaves the global RNG (dropout's) exactly where it was."""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    source_batches(kind, tmp_path, processor)
    assert torch.equal(torch.get_rng_state(), before)


def test_the_training_step_loader_leaves_the_global_rng_alone(processor):
    from wukong_hf.training.batches import plan_steps
    from wukong_hf.training.config import DataSection

    plan = plan_steps(pairs_dataset(16), None, processor, DataSection(augment=True), micro_batch=2, accumulation=2,
                      rank=0, world_size=1, seed=0, max_steps=3, epochs=1)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    steps = list(plan.loader(start_step=1))  # as after a resume at step 1
    assert len(steps) == 2 and all(len(step) == 2 for step in steps)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("kind", SOURCES)
def test_unusable_pairs_are_skipped_counted_and_logged_in_every_source(kind, tmp_path, processor, caplog):
    bad = {2: "image", 5: "caption"}
    batches = source_batches(kind, tmp_path, processor, bad=bad)
    assert [len(b["input_ids"]) for b in batches] == [3, 3]
    assert "skipping unusable training pair" in caplog.text
    assert "undecodable image in column" in caplog.text and "no caption text in column 'caption'" in caplog.text \
        or "no caption text in column 'txt'" in caplog.text
    if kind == "map-style":
        assert [b["skipped"] for b in batches] == [1, 1] and batches[0]["indices"] == [0, 1, 3]


@pytest.mark.parametrize("kind", SOURCES)
def test_training_counts_skipped_pairs_in_its_history(kind, tmp_path, capsys):
    bad = {2: "image", 5: "caption", 9: "image"}
    sections = {"loop": {"batch_size": 4, "max_steps": 3}}
    if kind == "shards":
        write_pair_shards(tmp_path / "shards", 12, bad=bad)
        result = train(tiny_config(tmp_path / "run", data={"shards": str(tmp_path / "shards"), "shuffle": False},
                                   **sections))
    else:
        data = pairs_dataset(12, bad)
        data = data.to_iterable_dataset() if kind == "datasets stream" else data
        result = train(tiny_config(tmp_path / "run", data={"shuffle": False}, **sections), train_dataset=data)
    assert [h["skipped_pairs"] for h in result.history] == [1, 2, 3] and result.skipped_pairs == 3
    assert "skipped 3 unusable training pairs" in capsys.readouterr().out


def test_a_micro_batch_without_usable_pairs_stops_with_a_clear_error(tmp_path, processor):
    data = pairs_dataset(8, {i: "caption" for i in range(8)})
    with pytest.raises(TrainingDataError, match=r"No usable pair in a micro-batch of 4 \(first reason: no caption text "
                                                r"in column 'caption'.*check data.image_column / data.caption_column"):
        train(tiny_config(tmp_path / "run", loop={"batch_size": 4, "max_steps": 1}), train_dataset=data)


def test_train_py_reports_unusable_data_in_one_line(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    import train as train_script

    pairs_dataset(8, {i: "image" for i in range(8)}).save_to_disk(str(tmp_path / "broken"))
    config = tiny_config(tmp_path / "run", data={"dataset": str(tmp_path / "broken")}, loop={"batch_size": 4})
    (tmp_path / "run.yaml").write_text(config.to_yaml(), encoding="utf-8")
    assert train_script.main([str(tmp_path / "run.yaml")]) == 2
    err = capsys.readouterr().err
    assert "train.py: error: No usable pair in a micro-batch of 4 (first reason: undecodable image" in err
    assert "Traceback" not in err


# ----- one dataset opener ----------------------------------------------------------------------------------
def labelled(n: int = 6) -> datasets.Dataset:
    data = pairs_dataset(n).add_column("label", [i % 2 for i in range(n)])
    return data.cast_column("label", datasets.ClassLabel(names=["猫", "狗"]))


def test_one_opener_for_save_to_disk_folders_repositories_and_missing_paths(tmp_path):
    from wukong_hf.data.dataset_source import open_dataset
    from wukong_hf.evaluation.image_sources import hf_dataset_images

    labelled().save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"test": labelled(4)}).save_to_disk(str(tmp_path / "saved-dict"))
    labelled().to_parquet(str(tmp_path / "repo" / "test.parquet"))
    assert len(open_dataset(str(tmp_path / "saved"))) == 6
    assert len(open_dataset(str(tmp_path / "saved-dict"), split="test")) == 4
    assert len(open_dataset(str(tmp_path / "repo"), split="test")) == 6  # load_dataset: test.parquet is the test split
    assert next(iter(open_dataset(str(tmp_path / "saved"), streaming=True)))["caption"] == CAPTIONS[0]
    with pytest.raises(ValueError, match=r"has no split 'validation' \(splits: test\)"):
        open_dataset(str(tmp_path / "saved-dict"), split="validation")
    with pytest.raises(FileNotFoundError, match="Dataset folder ./no/such/folder does not exist"):
        open_dataset("./no/such/folder")
    with pytest.raises(FileNotFoundError, match="Dataset someone/nothing is not a local folder and could not be "
                                                "loaded from the Hub"):  # tests run offline (conftest)
        open_dataset("someone/nothing")
    # Evaluation opens a save_to_disk folder as training does (it used to refuse it).
    images = hf_dataset_images(str(tmp_path / "saved"), split="test")
    assert images.folder_classes == ["猫", "狗"] and len(images.loaders) == 6


def test_eval_zero_shot_cli_accepts_the_folder_training_accepts(tmp_path, capsys):
    from wukong_hf.cli import main

    labelled().save_to_disk(str(tmp_path / "saved"))
    assert main(["eval", "zero-shot", "--dataset", str(tmp_path / "saved"), "--templates", "none",
                 "--output", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "results.json").is_file()
    config = tiny_config(tmp_path / "run", data={"dataset": str(tmp_path / "saved")}, loop={"batch_size": 2,
                                                                                            "max_steps": 1})
    assert len(train(config).history) == 1
