"""Tiny training runs: learning, LiT lock, accumulation = big batch, SIGKILL resume, bad checkpoints,
two processes = one process. Determinism needs data.augment=false and dropout 0 (set below)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from wukong_hf.training import CheckpointError, TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"红色": (220, 40, 40), "绿色": (40, 170, 60), "蓝色": (40, 80, 220), "黄色": (240, 210, 40)}
NO_DROPOUT = {"text_config.hidden_dropout_prob": 0.0, "text_config.attention_probs_dropout_prob": 0.0,
              "image_pooling": "mean"}


def coloured_pairs(n: int, seed: int = 0) -> datasets.Dataset:
    """n noisy single-colour 32 px images; caption = the colour name; label = its index."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    rows = {"image": [], "caption": [], "label": []}
    for i in range(n):
        k = i % len(names)
        arr = np.clip(np.array(COLOURS[names[k]]) + rng.normal(0, 10, (32, 32, 3)), 0, 255).astype("uint8")
        rows["image"].append(Image.fromarray(arr))
        rows["caption"].append(names[k])
        rows["label"].append(k)
    return datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())


def tiny_config(out: Path, **sections) -> TrainConfig:
    base = {
        "model": {"preset": "tiny-global", "overrides": dict(NO_DROPOUT)},
        "data": {"augment": False},
        "eval": {"class_names": list(COLOURS), "templates": ["{c}"]},
        "optim": {"lr": 5e-2, "weight_decay": 0.01, "warmup_steps": 2},
        "loop": {"output_dir": str(out), "batch_size": 8, "max_steps": 6},
        "checkpoint": {"resume": "none"},
        "log": {"report_to": "none", "progress_bar": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return TrainConfig.from_dict(base)


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def assert_same_weights(a, b, atol: float) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert worst <= atol, f"max weight difference {worst} > {atol}"


def test_tiny_run_learns_and_keeps_locked_tower_bit_identical(tmp_path):
    """The shipped CPU recipe (locked random tower, token-wise head, lr 1e-2) on 4 colours: the final loss is well
    below chance ln(16), not merely below the first step's (the earlier test passed at chance, from 4.9 down to 2.77)."""
    from wukong_hf import WukongModel, preset_config

    config = tiny_config(tmp_path / "run", model={"preset": "tiny-token-wise"}, optim={"lr": 1e-2},
                         loop={"batch_size": 16, "max_steps": 40}, log={"report_to": "tensorboard"})
    result = train(config, train_dataset=coloured_pairs(64), eval_dataset=coloured_pairs(16, seed=1))
    chance = np.log(16)  # uniform over the 16 pairs of a batch; the floor here is ln 4 (4 pairs share each caption)
    assert result.history[-1]["loss"] <= 0.7 * chance, [round(h["loss"], 3) for h in result.history]
    assert result.history[-1]["val_accuracy"] > 25.0  # chance with 4 classes
    assert {"step", "loss", "lr", "temperature", "samples_per_s"} <= result.history[0].keys()
    assert result.best_model_dir and (Path(result.best_model_dir) / "model.safetensors").is_file()
    assert (Path(result.final_model_dir) / "processor_config.json").is_file()
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents*"))
    torch.manual_seed(0)  # train() builds the model under set_seed(loop.seed=0)
    initial = WukongModel(preset_config("tiny-token-wise", image_pooling="mean")).state_dict()
    final = weights(result.final_model_dir)
    tower = [k for k in final if k.startswith("vision_model.")]
    assert tower and all(torch.equal(initial[k], final[k]) for k in tower)
    assert not torch.equal(initial["text_projection.weight"], final["text_projection.weight"])


# Every config in configs/ that runs on a CPU (the rest are the paper's GPU runs on Wukong 100M).
CPU_CONFIGS = ["train-tiny-cpu.yaml"]


@pytest.mark.parametrize("name", CPU_CONFIGS)
def test_shipped_cpu_configs_learn(tmp_path, name):
    """Each CPU config, as shipped (its model, optimiser, steps, dropout), on the data its documented command makes:
    the final loss is at most 0.7 x chance (ln of the batch size). The earlier tiny config ended at chance."""
    from wukong_hf.data.synthetic import SyntheticShapes

    assert sorted(p.name for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("train-paper-")) == \
        sorted(CPU_CONFIGS)
    SyntheticShapes().to_dataset("train", 256).save_to_disk(str(tmp_path / "tiny-pairs"))  # docs/training.md
    config = TrainConfig.from_yaml(ROOT / "configs" / name, [f"data.dataset={tmp_path / 'tiny-pairs'}",
                                                             f"loop.output_dir={tmp_path / 'run'}",
                                                             "log.report_to=none", "log.progress_bar=false"])
    history = train(config).history
    chance = np.log(config.loop.batch_size)
    assert history[-1]["step"] == config.loop.max_steps
    assert history[-1]["loss"] <= 0.7 * chance, (history[-1]["loss"], chance)


@pytest.mark.parametrize("preset, locked", [("tiny-global", True), ("tiny-token-wise", False)])
def test_accumulation_equals_one_big_batch(tmp_path, preset, locked):
    data = coloured_pairs(32)
    common = {"model": {"preset": preset, "lock_image_tower": locked, "overrides": dict(NO_DROPOUT)}}
    big = train(tiny_config(tmp_path / "big", loop={"batch_size": 8, "max_steps": 3}, **common), train_dataset=data)
    small = train(tiny_config(tmp_path / "acc", loop={"batch_size": 2, "accumulation_steps": 4, "max_steps": 3}, **common),
                  train_dataset=data)
    assert_same_weights(big.final_model_dir, small.final_model_dir, atol=1e-5)


@pytest.mark.parametrize("locked, expected_tower_runs", [(True, 2), (False, 4)])
def test_accumulation_never_reruns_a_locked_image_tower(locked, expected_tower_runs):
    from accelerate import Accelerator

    from wukong_hf import WukongModel, WukongProcessor, preset_config
    from wukong_hf.losses import ContrastiveLoss
    from wukong_hf.training.step import DualEncoderStep, train_step

    config = preset_config("tiny-global", image_pooling="mean")
    model = WukongModel(config).train()
    runs = []
    model.vision_model.timm_model.patch_embed.register_forward_hook(lambda *args: runs.append(1))
    text = WukongProcessor.from_config(config)(text=["红色", "绿色"])
    micro = [{"pixel_values": torch.randn(2, 3, config.image_size, config.image_size), **text} for _ in range(2)]
    loss_fn = ContrastiveLoss(model.similarity_rule, layout="lit" if locked else "local")
    step = DualEncoderStep(model, lock_image_tower=locked)
    train_step(step, micro, loss_fn, Accelerator(cpu=True), replay_image_tower=locked)
    assert len(runs) == expected_tower_runs  # pass 1 per micro-batch; pass 2 only for a trainable tower
    assert model.text_projection.weight.grad is not None


def test_text_tower_gradient_checkpointing_gives_the_same_update(tmp_path):
    data = coloured_pairs(16)
    common = {"loop": {"batch_size": 4, "accumulation_steps": 2, "max_steps": 2}}
    plain = train(tiny_config(tmp_path / "plain", **common), train_dataset=data)
    checkpointed = train(tiny_config(tmp_path / "ckpt", model={"gradient_checkpointing": True}, **common),
                         train_dataset=data)
    assert_same_weights(plain.final_model_dir, checkpointed.final_model_dir, atol=1e-6)
    from wukong_hf.training.config import ModelSection
    from wukong_hf.training.loop import load_model_for_training

    model, _ = load_model_for_training(ModelSection(preset="tiny-global", gradient_checkpointing=True))
    def checkpointing(module):  # transformers 5 renames is_gradient_checkpointing (deprecated)
        name = "is_activation_checkpointing" if hasattr(type(module), "is_activation_checkpointing") else "is_gradient_checkpointing"
        return getattr(module, name)

    assert checkpointing(model.text_model) and not checkpointing(model.vision_model)


def test_bf16_augmented_run_and_push_at_the_end(tmp_path):
    config = tiny_config(tmp_path / "run", data={"augment": True}, loop={"max_steps": 2, "mixed_precision": "bf16"},
                         hub={"push": True, "repo_id": "someone/wukong-tiny", "dry_run_dir": str(tmp_path / "push")})
    result = train(config, train_dataset=coloured_pairs(16), eval_dataset=coloured_pairs(8, seed=1))
    assert np.isfinite([h["loss"] for h in result.history]).all() and len(result.history) == 2
    assert weights(result.final_model_dir)["text_projection.weight"].dtype == torch.float32
    pushed = tmp_path / "push"
    assert (pushed / "model.safetensors").is_file() and (pushed / "processor_config.json").is_file()
    card = (pushed / "README.md").read_text(encoding="utf-8")
    assert "someone/wukong-tiny" in card and f"{result.history[-1]['val_accuracy']}" in card


def test_cached_locked_features_give_the_same_run(tmp_path):
    data = coloured_pairs(16)
    plain = train(tiny_config(tmp_path / "plain", loop={"max_steps": 6}), train_dataset=data)
    cached = train(tiny_config(tmp_path / "cached", loop={"max_steps": 6, "cache_image_features": True}), train_dataset=data)
    assert_same_weights(plain.final_model_dir, cached.final_model_dir, atol=1e-6)


def _save_dataset_and_config(tmp_path: Path, out: Path, augment: bool = False, **sections) -> Path:
    folder = tmp_path / "pairs"
    if not folder.exists():
        coloured_pairs(32).save_to_disk(str(folder))
    config = tiny_config(out, data={"augment": augment, "dataset": str(folder)}, **sections)
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(config.to_yaml(), encoding="utf-8")
    return path


KILL_AFTER_CHECKPOINT = """
import os, signal, sys
import wukong_hf.training.loop as loop
real = loop.save_checkpoint
def save_then_die(accelerator, output_dir, progress, keep_last):
    path = real(accelerator, output_dir, progress, keep_last)
    if progress.step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
loop.save_checkpoint = save_then_die
sys.argv = ["train.py", *sys.argv[1:]]
sys.path.insert(0, {root!r})
import train
sys.exit(train.main(sys.argv[1:]))
"""


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_sigkill_after_checkpoint_resumes_to_the_same_weights(tmp_path):
    sections = {"loop": {"max_steps": 8}, "checkpoint": {"every_steps": 2, "resume": "auto"}}
    config_path = _save_dataset_and_config(tmp_path, tmp_path / "killed", **sections)
    script = tmp_path / "kill.py"
    script.write_text(KILL_AFTER_CHECKPOINT.format(root=str(ROOT)))
    died = subprocess.run([sys.executable, str(script), str(config_path)], env=_env(), capture_output=True, text=True)
    assert died.returncode == -9, died.stderr[-2000:]
    assert not (tmp_path / "killed" / "final").exists()
    resumed = train(TrainConfig.from_yaml(config_path))
    assert resumed.resumed_from.endswith("step-00000004")
    uninterrupted = train(TrainConfig.from_yaml(_save_dataset_and_config(tmp_path, tmp_path / "straight", **sections)))
    assert uninterrupted.resumed_from is None
    # 1e-6: the killed run used OMP_NUM_THREADS=1, this process several threads (summation order)
    assert_same_weights(resumed.final_model_dir, uninterrupted.final_model_dir, atol=1e-6)
    assert [h["step"] for h in resumed.history] == list(range(1, 9))


def _run_train_py(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], env=_env(), capture_output=True,
                          text=True, timeout=600)


def test_sigkill_with_dropout_on_resumes_bit_for_bit(tmp_path):
    """Dropout on (BERT's 0.1): a run SIGKILLed after its step-4 checkpoint and resumed ends with exactly the weights
    of an uninterrupted run. Both run in subprocesses with the same thread count, so no summation order differs.
    (The DataLoader built after the resume used to draw its base seed from the global RNG, shifting every later
    dropout mask: 1e-3 off.)"""
    dropout = {"model": {"overrides": {"image_pooling": "mean"}}, "loop": {"max_steps": 8},
               "checkpoint": {"every_steps": 2, "resume": "auto"}}
    killed_config = _save_dataset_and_config(tmp_path, tmp_path / "killed", **dropout)
    straight_config = _save_dataset_and_config(tmp_path, tmp_path / "straight", **dropout)
    assert TrainConfig.from_yaml(killed_config).model.overrides == {"image_pooling": "mean"}  # dropout stays on
    script = tmp_path / "kill.py"
    script.write_text(KILL_AFTER_CHECKPOINT.format(root=str(ROOT)))
    died = subprocess.run([sys.executable, str(script), str(killed_config)], env=_env(), capture_output=True, text=True)
    assert died.returncode == -9, died.stderr[-2000:]
    resumed = _run_train_py(killed_config)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout and "step-00000004" in resumed.stdout
    assert _run_train_py(straight_config).returncode == 0
    a, b = weights(tmp_path / "killed" / "final"), weights(tmp_path / "straight" / "final")
    assert a.keys() == b.keys()
    differ = {k: (a[k] - b[k]).abs().max().item() for k in a if not torch.equal(a[k], b[k])}
    worst = max(differ.items(), key=lambda kv: kv[1], default=None)
    assert not differ, f"{len(differ)} of {len(a)} tensors differ from the uninterrupted run; largest: {worst}"
    history = json.loads((tmp_path / "killed" / "history.json").read_text())
    straight = json.loads((tmp_path / "straight" / "history.json").read_text())
    assert [h["loss"] for h in history] == [h["loss"] for h in straight]


def test_rerunning_a_finished_run_says_so_and_trains_nothing(tmp_path, capsys):
    data = coloured_pairs(16)
    sections = {"loop": {"max_steps": 4}, "checkpoint": {"every_steps": 2, "resume": "auto"}}
    first = train(tiny_config(tmp_path / "run", **sections), train_dataset=data)
    final = Path(first.final_model_dir) / "model.safetensors"
    before = (final.read_bytes(), final.stat().st_mtime_ns)
    capsys.readouterr()
    again = train(tiny_config(tmp_path / "run", **sections), train_dataset=data)
    printed = capsys.readouterr().out
    assert again.already_finished and again.resumed_from is None
    assert f"{tmp_path / 'run'} holds a finished run (4 steps; final model in {first.final_model_dir}): nothing to do" \
        in printed and "checkpoint.resume=none to start over" in printed
    assert (final.read_bytes(), final.stat().st_mtime_ns) == before
    assert [h["step"] for h in again.history] == [1, 2, 3, 4] and again.final_model_dir == first.final_model_dir
    # Asking for it: resume=none trains again from scratch in the same folder.
    fresh = train(tiny_config(tmp_path / "run", loop={"max_steps": 4}, checkpoint={"resume": "none"}), train_dataset=data)
    assert not fresh.already_finished and len(fresh.history) == 4 and final.stat().st_mtime_ns != before[1]


def test_train_py_on_a_finished_run_exits_0_without_training(tmp_path):
    config_path = _save_dataset_and_config(tmp_path, tmp_path / "run", loop={"max_steps": 2},
                                           checkpoint={"resume": "auto"})
    assert _run_train_py(config_path).returncode == 0
    final = tmp_path / "run" / "final" / "model.safetensors"
    stamp = final.stat().st_mtime_ns
    again = _run_train_py(config_path)
    assert again.returncode == 0 and "holds a finished run (2 steps" in again.stdout
    assert "training" not in again.stderr  # no progress bar: nothing trained
    assert final.stat().st_mtime_ns == stamp


def test_corrupt_incomplete_and_missing_checkpoints_give_clear_errors(tmp_path):
    data = coloured_pairs(16)
    out = tmp_path / "run"
    train(tiny_config(out, loop={"max_steps": 4}, checkpoint={"every_steps": 2}), train_dataset=data)
    (out / "finished.json").unlink()  # as if the run had been killed after its last checkpoint
    checkpoint = out / "checkpoints" / "step-00000002"
    (checkpoint / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="step-00000002 is corrupt and cannot be loaded"):
        train(tiny_config(out, loop={"max_steps": 4}, checkpoint={"resume": "auto"}), train_dataset=data)
    (checkpoint / "COMPLETE").unlink()
    with pytest.raises(CheckpointError, match="is incomplete"):
        train(tiny_config(out, loop={"max_steps": 4}, checkpoint={"resume": str(checkpoint)}), train_dataset=data)
    with pytest.raises(CheckpointError, match="does not exist"):
        train(tiny_config(out, loop={"max_steps": 4}, checkpoint={"resume": str(out / "nope")}), train_dataset=data)


def test_missing_columns_are_reported(tmp_path):
    data = coloured_pairs(16).rename_column("caption", "text")
    with pytest.raises(ValueError, match=r"no column 'caption'.*set data.caption_column"):
        train(tiny_config(tmp_path / "run", data={"caption_column": "caption"}), train_dataset=data)
    with pytest.raises(ValueError, match=r"no caption column \(looked for caption, txt, text; columns: .*'words'.*set "
                                         r"data.caption_column"):
        train(tiny_config(tmp_path / "run"), train_dataset=coloured_pairs(16).rename_column("caption", "words"))
    assert not (tmp_path / "run").exists()


def test_one_column_mapping_for_every_source(tmp_path):
    """Unset columns are found by name the same way for datasets ("image"/"caption") and shards ("jpg"/"txt")."""
    from wukong_hf.data.train_loader import resolve_columns

    assert resolve_columns(["image", "caption", "label"]) == ("image", "caption")
    assert resolve_columns(["__key__", "__url__", "jpg", "txt", "json"]) == ("jpg", "txt")
    assert resolve_columns(["png", "text"]) == ("png", "text")
    assert resolve_columns(["photo", "title", "jpg"], "photo", "title") == ("photo", "title")
    renamed = coloured_pairs(16).rename_column("image", "jpg").rename_column("caption", "txt")
    result = train(tiny_config(tmp_path / "run", loop={"max_steps": 1}), train_dataset=renamed)
    assert len(result.history) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"],
    # --multi_gpu on a machine without CUDA: Accelerate's launcher runs torchrun; train() then picks gloo.
    # (`accelerate launch --cpu --num_processes 2` starts ONE process in accelerate 1.x: not usable here.)
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port"],
}


@pytest.mark.parametrize("launcher, preset, locked, accumulation, augment",
                         [("torchrun", "tiny-global", True, 1, True), ("accelerate", "tiny-token-wise", False, 2, False)])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, launcher, preset, locked, accumulation,
                                                                    augment):
    """2 gloo processes x (8 / 2 / k) pairs x k micro-batches end 3 steps within 1e-5 absolute (float32) of one
    process with batch 8: only the summation order differs (all-gather, DDP all-reduce); measured ~4e-7.
    AutoAugment is seeded per pair, so it does not depend on the number of processes."""
    model = {"preset": preset, "lock_image_tower": locked, "overrides": dict(NO_DROPOUT)}
    sections = {"loop": {"batch_size": 4 // accumulation, "accumulation_steps": accumulation, "max_steps": 3},
                "model": model}
    config_path = _save_dataset_and_config(tmp_path, tmp_path / "two", augment=augment, **sections)
    cmd = [sys.executable, *LAUNCHERS[launcher], str(_free_port()), str(ROOT / "train.py"), str(config_path)]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    one = train(tiny_config(tmp_path / "one", data={"augment": augment, "dataset": str(tmp_path / "pairs")},
                            loop={"batch_size": 8, "max_steps": 3}, model=model))
    two_history = json.loads((tmp_path / "two" / "history.json").read_text())
    assert [h["loss"] for h in two_history] == pytest.approx([h["loss"] for h in one.history], abs=1e-5)
    assert_same_weights(tmp_path / "two" / "final", one.final_model_dir, atol=1e-5)


def test_launch_that_accelerate_does_not_see_is_refused(tmp_path, monkeypatch):
    import wukong_hf.training.loop as loop

    monkeypatch.setattr(loop, "launched_processes", lambda: 2)
    with pytest.raises(RuntimeError, match="launcher started 2 processes but Accelerate sees 1"):
        train(tiny_config(tmp_path / "run"), train_dataset=coloured_pairs(16))
    assert not (tmp_path / "run").exists()


def test_webdataset_shards_train_resume_and_stop_at_the_end_of_the_stream(tmp_path):
    from test_data_repository import write_shards

    write_shards(tmp_path / "shards", n_shards=2, per_shard=12)
    sections = {"data": {"augment": False, "shards": str(tmp_path / "shards")}, "loop": {"batch_size": 4, "max_steps": 4},
                "checkpoint": {"every_steps": 2, "resume": "auto"}}
    straight = train(tiny_config(tmp_path / "run", **sections))
    assert [h["step"] for h in straight.history] == [1, 2, 3, 4]
    assert np.isfinite([h["loss"] for h in straight.history]).all()
    straight_weights = weights(straight.final_model_dir)
    # The run is finished; resuming it again from its latest checkpoint (step 2; step 4 ended the run) is an explicit ask.
    latest = str(tmp_path / "run" / "checkpoints" / "step-00000002")
    resumed = train(tiny_config(tmp_path / "run", **{**sections, "checkpoint": {"every_steps": 2, "resume": latest}}))
    assert resumed.resumed_from.endswith("step-00000002")
    final = weights(resumed.final_model_dir)
    assert max((final[k] - straight_weights[k]).abs().max().item() for k in final) <= 1e-6
    # 24 pairs = 6 batches of 4: a longer run stops cleanly when the stream ends
    short = train(tiny_config(tmp_path / "short", **{**sections, "loop": {"batch_size": 4, "max_steps": 10},
                                                      "checkpoint": {"resume": "none"}}))
    assert [h["step"] for h in short.history] == [1, 2, 3, 4, 5, 6]


def test_launcher_mixed_precision_wins_unless_the_config_sets_it(tmp_path):
    """`accelerate launch --mixed_precision bf16` and an `accelerate config` file reach the run (they used to be
    overridden by the config's default "no"); a value the training YAML sets wins, and the log says which and why."""
    unset = _save_dataset_and_config(tmp_path, tmp_path / "unset", loop={"max_steps": 1})
    assert TrainConfig.from_yaml(unset).loop.mixed_precision is None
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
              "--dynamo_backend", "no"]
    run = subprocess.run([*launch, "--mixed_precision", "bf16", str(ROOT / "train.py"), str(unset)], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "mixed precision: bf16 (from the launcher: ACCELERATE_MIXED_PRECISION=bf16" in run.stdout
    assert "gradient accumulation steps: 1 (default; set loop.accumulation_steps" in run.stdout
    finished = json.loads((tmp_path / "unset" / "finished.json").read_text())
    assert finished["launch_settings"]["mixed_precision"] == {"value": "bf16", "source": "launcher"}
    assert "mixed_precision: bf16" in (tmp_path / "unset" / "train_config.yaml").read_text()

    accelerate_config = tmp_path / "accelerate.yaml"
    accelerate_config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nmixed_precision: bf16\n"
                                 "num_machines: 1\nnum_processes: 1\nuse_cpu: true\n")
    explicit = _save_dataset_and_config(tmp_path, tmp_path / "explicit", loop={"max_steps": 1, "mixed_precision": "no"})
    from_file = _save_dataset_and_config(tmp_path, tmp_path / "file", loop={"max_steps": 1})
    for config_path, expected in [(from_file, "mixed precision: bf16 (from the launcher"),
                                  (explicit, "mixed precision: no (from the training config, loop.mixed_precision; "
                                             "overrides the launcher's ACCELERATE_MIXED_PRECISION=bf16)")]:
        run = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
                              str(ROOT / "train.py"), str(config_path)], env=_env(), capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        assert expected in run.stdout


def test_launcher_accumulation_steps_reach_the_run(tmp_path, monkeypatch):
    """ACCELERATE_GRADIENT_ACCUMULATION_STEPS (what `accelerate launch` sets for DeepSpeed runs, or exported by hand)
    gives the run its accumulation when the config leaves loop.accumulation_steps unset: the same weights as
    setting it in the config."""
    data = coloured_pairs(16)
    explicit = train(tiny_config(tmp_path / "explicit", loop={"batch_size": 2, "accumulation_steps": 2, "max_steps": 2}),
                     train_dataset=data)
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")
    launched = train(tiny_config(tmp_path / "launched", loop={"batch_size": 2, "max_steps": 2}), train_dataset=data)
    assert launched.launch_settings["accumulation_steps"] == {"value": 2, "source": "launcher"}
    assert explicit.launch_settings["accumulation_steps"] == {"value": 2, "source": "training config"}
    assert_same_weights(launched.final_model_dir, explicit.final_model_dir, atol=0.0)
    single = train(tiny_config(tmp_path / "single", loop={"batch_size": 2, "accumulation_steps": 1, "max_steps": 2}),
                   train_dataset=data)
    assert single.launch_settings["accumulation_steps"]["source"] == "training config"
    with pytest.raises(AssertionError):  # the config's explicit 1 wins over the launcher's 2: a different run
        assert_same_weights(single.final_model_dir, explicit.final_model_dir, atol=1e-6)
