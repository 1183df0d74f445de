"""`train(config)`: the training loop, top to bottom: model, data, optimiser, schedule, resume,
steps (with checkpoints, logging, zero-shot validation), export, optional push.

Runs unchanged on one CPU, one GPU, or many processes under `accelerate launch`.
"""

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .batches import PairBatches, ShardPairBatches, StreamingPairBatches
from .checkpoints import TrainingProgress, find_checkpoint, load_checkpoint, save_checkpoint
from .config import DataSection, ModelSection, TrainConfig, TrainConfigError
from .recipe import build_augmentation, build_optimizer, build_scheduler
from .step import DualEncoderStep, TowerOutputCache, train_step

__all__ = ["train", "TrainResult", "load_model_for_training", "load_train_dataset", "zero_shot_accuracy"]


@dataclass
class TrainResult:
    """What a run produced: folders (save_pretrained: safetensors + processor) and the logged history."""

    output_dir: str
    final_model_dir: str
    best_model_dir: str | None = None
    history: list[dict] = field(default_factory=list)
    best_accuracy: float | None = None
    resumed_from: str | None = None


def _apply_model_overrides(config, overrides: dict):
    for key, value in overrides.items():
        target, *path = key.split(".")
        obj = config
        for part in [target, *path][:-1]:
            obj = getattr(obj, part, None)
            if obj is None:
                raise TrainConfigError(f"model.overrides key {key!r}: the model config has no {part!r}.")
        leaf = key.split(".")[-1]
        if not hasattr(obj, leaf):
            raise TrainConfigError(f"model.overrides key {key!r}: the model config has no field {leaf!r}.")
        setattr(obj, leaf, value)
    return config


def load_model_for_training(section: ModelSection):
    """(WukongModel in train mode, WukongProcessor) from a preset or a folder / Hub id, overrides applied.

    Whether the image tower is locked is not the model's business: DualEncoderStep applies
    section.lock_image_tower (LiT) for the run.
    """
    from ..model_folders import load_model_and_processor, load_model_config

    config = _apply_model_overrides(load_model_config(section.name_or_path, section.preset), section.overrides)
    model, processor = load_model_and_processor(section.name_or_path, section.preset, config=config)
    if section.gradient_checkpointing:
        text = model.text_model  # transformers 5 deprecates gradient_checkpointing_enable for activation_...
        (getattr(text, "activation_checkpointing_enable", None) or text.gradient_checkpointing_enable)()
    return model.train(), processor


def _load_dataset(path: str, name: str | None, split: str, streaming: bool = False):
    import datasets

    if Path(path).is_dir() and (Path(path) / "state.json").is_file() or (Path(path) / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(path)  # a save_to_disk folder
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    return datasets.load_dataset(path, name=name, split=split, streaming=streaming)


def load_train_dataset(section: DataSection):
    """The training pairs named by data.dataset (save_to_disk folder, dataset repository folder or Hub id)."""
    dataset = _load_dataset(section.dataset, section.name, section.split, section.streaming)
    _check_columns(dataset, [section.image_column, section.caption_column], "data")
    return dataset


def _check_columns(dataset, columns: list[str], section: str) -> None:
    names = dataset.column_names
    if names is None:  # some streamed datasets do not know their columns before the first row
        return
    for column, key in zip(columns, ("image_column", "caption_column" if section == "data" else "label_column")):
        if column not in names:
            raise TrainConfigError(f"The {section} dataset has no column {column!r} (columns: {names}); set {section}.{key}.")


def zero_shot_accuracy(model, processor, eval_dataset, config: TrainConfig) -> float:
    """Top-1 zero-shot accuracy (percent) on eval_dataset (image + label columns) with the configured
    class names and templates, through wukong_hf.evaluation.zero_shot_classification."""
    from ..evaluation.image_sources import dataset_images
    from ..evaluation.zero_shot import zero_shot_classification

    e = config.eval
    images = dataset_images(eval_dataset, e.image_column, e.label_column, e.split)
    was_training = model.training
    model.eval()
    report = zero_shot_classification(model, processor, images, e.class_names, e.templates, batch_size=e.batch_size)
    model.train(was_training)  # the caller puts a locked tower back in eval mode (DualEncoderStep.train)
    return float((report["ensemble"] or report["single_prompt"])["top1"])


def launched_processes() -> int:
    """How many processes the launcher started (torchrun / accelerate launch / mpirun env), 1 if none."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def _build_accelerator(config: TrainConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    log_with = None if config.log.report_to == "none" else config.log.report_to
    # Parameters no loss term reaches (token reduction under a global loss) must not stall DDP.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # A second train() in the same Python process (notebook, tests) may ask for another precision; the
    # process group (PartialState) is kept.
    AcceleratorState._reset_state()
    launched = launched_processes()
    # Without cpu=True, Accelerate treats a multi-process launch on a machine without CUDA as
    # single-process (DistributedType.NO) while still opening a process group: every process would
    # train the full batch alone. cpu=True selects its MULTI_CPU (gloo) mode instead.
    cpu = launched > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=config.loop.mixed_precision,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=config.loop.output_dir, logging_dir=str(Path(config.loop.output_dir) / "logs")),
        kwargs_handlers=[ddp],
    )
    if accelerator.num_processes != launched:
        raise RuntimeError(
            f"The launcher started {launched} processes but Accelerate sees {accelerator.num_processes} "
            f"(distributed type {accelerator.distributed_type}); the global batch would be wrong. Launch with "
            "`accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N`."
        )
    return accelerator


def aligned_across_processes(micro_batches: list[dict] | None, accumulation: int, accelerator) -> list[dict] | None:
    """A streamed step, the same shape on every process: micro-batch j cut to the smallest size any process
    has (the shard loader skips undecodable images), and None everywhere once any process's stream has
    ended (otherwise the others would wait in the loss's all-gather forever)."""
    if accelerator.num_processes == 1:
        return micro_batches
    if micro_batches is None:
        sizes = torch.zeros(accumulation, dtype=torch.long, device=accelerator.device)
    else:
        sizes = torch.tensor([len(mb["input_ids"]) for mb in micro_batches], device=accelerator.device)
    smallest = accelerator.gather(sizes).view(-1, accumulation).min(dim=0).values.tolist()
    if micro_batches is None or min(smallest) == 0:
        return None
    return [{key: value[:n] if torch.is_tensor(value) or isinstance(value, list) else value for key, value in mb.items()}
            for mb, n in zip(micro_batches, smallest)]


def _flat_hparams(config: TrainConfig) -> dict:
    flat = {}
    for section, values in config.to_dict().items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value, ensure_ascii=False)
    return flat


def _write_validation_results(config: TrainConfig, accuracy: float, out: Path) -> str:
    """validation_results.json with the "model_index" entry of the final model's zero-shot top-1,
    built by the same code as `wukong eval zero-shot` (evaluation.report.model_index_entries)."""
    from ..evaluation.report import model_index_entries

    e = config.eval
    similarity = json.loads((out / "final" / "config.json").read_text(encoding="utf-8"))["similarity"]
    # The setting zero_shot_accuracy measured: its templates, with zero_shot_classification's default ensemble.
    result = {
        "task": "zero-shot-classification",
        "dataset": Path(str(e.dataset).rstrip("/")).name if e.dataset else "validation set",
        "dataset_source": e.dataset,
        "dataset_config": e.name,
        "split": e.split,
        "num_templates": len(e.templates),
        "ensemble_method": "embedding" if similarity == "global" else "similarity",
        # zero_shot_classification measures a bare class name as its single prompt, templates as an ensemble
        "single_prompt" if e.templates == ["{c}"] else "ensemble": {"top1": accuracy},
    }
    path = out / "validation_results.json"
    path.write_text(json.dumps({"model_index": model_index_entries(result)}, indent=1, ensure_ascii=False), encoding="utf-8")
    return str(path)


def _export(model, processor, folder: Path) -> None:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def train(config: TrainConfig, *, train_dataset=None, eval_dataset=None) -> TrainResult:
    """Train a Wukong model with the paper's LiT recipe as configured; resumable.

    Args:
        config: the run (see TrainConfig; validated before anything loads).
        train_dataset: optional datasets.Dataset / IterableDataset with "image" (PIL) and "caption"
            columns (names from data.image_column / data.caption_column), replacing data.dataset.
        eval_dataset: optional datasets.Dataset with image and integer label columns for zero-shot
            validation (class names and templates from config.eval), replacing eval.dataset.

    Returns:
        TrainResult: output_dir, final_model_dir, best_model_dir (or None), history (one dict per
        logged step: step, loss, lr, temperature, samples_per_s, and val_accuracy when evaluated).
    """
    config.validate(has_train_dataset=train_dataset is not None, has_eval_dataset=eval_dataset is not None)
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    lp, out = config.loop, Path(config.loop.output_dir)
    accelerator = _build_accelerator(config)
    set_seed(lp.seed)
    model, processor = load_model_for_training(config.model)
    locked = config.model.lock_image_tower

    # ----- data --------------------------------------------------------------------------------
    shards = config.data.shards if train_dataset is None else None
    if shards is None and train_dataset is None:
        train_dataset = load_train_dataset(config.data)
    elif train_dataset is not None:
        _check_columns(train_dataset, [config.data.image_column, config.data.caption_column], "data")
    if eval_dataset is None and config.eval.dataset is not None:
        eval_dataset = _load_dataset(config.eval.dataset, config.eval.name, config.eval.split)
    if eval_dataset is not None:
        _check_columns(eval_dataset, [config.eval.image_column, config.eval.label_column], "eval")
    augmentation = build_augmentation(config.data.augment)
    streaming = shards is not None or not hasattr(train_dataset, "__len__")
    if streaming and lp.max_steps == 0:
        raise TrainConfigError("A streamed training set has no length: set loop.max_steps.")
    common = dict(micro_batch=lp.batch_size, accumulation=lp.accumulation_steps, rank=accelerator.process_index,
                  world_size=accelerator.num_processes, image_column=config.data.image_column,
                  caption_column=config.data.caption_column, augmentation=augmentation)
    if not streaming:
        probe = PairBatches(train_dataset, processor, seed=lp.seed, shuffle=config.data.shuffle, **common)
        total_steps = lp.max_steps or lp.epochs * probe.steps_per_epoch
    else:
        total_steps = lp.max_steps

    # ----- optimiser, schedule, resume ---------------------------------------------------------
    step_module = DualEncoderStep(model, lock_image_tower=locked)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim.warmup_steps, total_steps)
    # The scheduler stays unprepared: Accelerate would step it once per process.
    step_module, optimizer = accelerator.prepare(step_module, optimizer)
    from ..losses import ContrastiveLoss

    loss_fn = ContrastiveLoss(model.similarity_rule, layout="lit" if locked else "local")

    progress = TrainingProgress()
    resume_from = find_checkpoint(out, config.checkpoint.resume)
    if resume_from is not None:
        progress = load_checkpoint(accelerator, resume_from)
        scheduler.load_state_dict(progress.scheduler)
        accelerator.print(f"resumed from {resume_from} at step {progress.step}")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    if config.log.report_to != "none":
        accelerator.init_trackers(config.log.project, config=_flat_hparams(config))

    if shards is not None:
        d = config.data
        # The section's default column names are the datasets ones; shards use jpg/txt, which the loader finds itself.
        loader = ShardPairBatches(shards, processor, micro_batch=lp.batch_size, accumulation=lp.accumulation_steps,
                                  rank=accelerator.process_index, world_size=accelerator.num_processes,
                                  start_step=progress.step, seed=lp.seed, augment=d.augment, num_workers=d.num_workers,
                                  image_column=None if d.image_column == "image" else d.image_column,
                                  caption_column=None if d.caption_column == "caption" else d.caption_column)
    else:
        if streaming:
            source = StreamingPairBatches(train_dataset, processor, start_step=progress.step, seed=lp.seed, **common)
        else:
            source = PairBatches(train_dataset, processor, seed=lp.seed, shuffle=config.data.shuffle,
                                 total_steps=total_steps, **common)
            source = torch.utils.data.Subset(source, range(progress.step, total_steps))
        loader = torch.utils.data.DataLoader(source, batch_size=None, num_workers=config.data.num_workers)
    tower_cache = TowerOutputCache() if lp.cache_image_features else None

    # ----- steps -------------------------------------------------------------------------------
    best_dir = out / "best"
    bar = tqdm(total=total_steps, initial=progress.step, desc="training", unit="step",
               disable=not (accelerator.is_local_main_process and config.log.progress_bar))
    step_module.train()
    global_batch = lp.batch_size * lp.accumulation_steps * accelerator.num_processes
    started = time.perf_counter()
    batches = iter(loader)
    while progress.step < total_steps:
        micro_batches = next(batches, None)
        if streaming:
            micro_batches = aligned_across_processes(micro_batches, lp.accumulation_steps, accelerator)
        if micro_batches is None:
            accelerator.print(f"the training stream ended after {progress.step} of {total_steps} steps")
            break
        micro_batches = [{k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in mb.items()}
                         for mb in micro_batches]
        if tower_cache is not None:
            for mb in micro_batches:
                mb["tower_output"] = tower_cache.lookup(mb["indices"])
        loss, towers = train_step(step_module, micro_batches, loss_fn, accelerator, replay_image_tower=locked)
        if tower_cache is not None:
            for mb, tower in zip(micro_batches, towers):
                if mb["tower_output"] is None and tower is not None:
                    tower_cache.store(mb["indices"], tower)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        bar.update(1)

        evaluate_now = eval_dataset is not None and (
            (config.eval.every_steps and progress.step % config.eval.every_steps == 0) or progress.step == total_steps
        )
        if progress.step % lp.log_every == 0 or evaluate_now or progress.step == total_steps:
            elapsed = time.perf_counter() - started
            record = {
                "step": progress.step,
                "loss": float(accelerator.reduce(loss, reduction="mean")),
                "lr": scheduler.get_last_lr()[0],
                "temperature": float(1.0 / model.inverse_temperature.detach()),
                "samples_per_s": global_batch * lp.log_every / max(elapsed, 1e-9),
            }
            started = time.perf_counter()
            if evaluate_now:
                accelerator.wait_for_everyone()
                accuracy = zero_shot_accuracy(model, processor, eval_dataset, config) if accelerator.is_main_process else 0.0
                record["val_accuracy"] = accuracy
                if accelerator.is_main_process and (progress.best_accuracy is None or accuracy > progress.best_accuracy):
                    progress.best_accuracy = accuracy
                    _export(model, processor, best_dir)
                accelerator.wait_for_everyone()
                step_module.train()  # evaluation left the model in train mode, a locked tower included
                started = time.perf_counter()
            progress.history.append(record)
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=progress.step)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
        every = config.checkpoint.every_steps
        if every and progress.step % every == 0 and progress.step < total_steps:
            progress.scheduler = scheduler.state_dict()
            save_checkpoint(accelerator, out, progress, config.checkpoint.keep_last)
    bar.close()

    # ----- export --------------------------------------------------------------------------------
    final_dir = out / "final"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _export(model, processor, final_dir)
        (out / "history.json").write_text(json.dumps(progress.history, indent=1, ensure_ascii=False), encoding="utf-8")
        if config.hub.push:
            from ..hub import push_model

            final_accuracy = next((h["val_accuracy"] for h in reversed(progress.history)
                                   if h["step"] == progress.step and "val_accuracy" in h), None)
            results = [] if final_accuracy is None else [_write_validation_results(config, final_accuracy, out)]
            push_model(str(final_dir), config.hub.repo_id, private=config.hub.private, dry_run_dir=config.hub.dry_run_dir,
                       results_files=results)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(
        output_dir=str(out),
        final_model_dir=str(final_dir),
        best_model_dir=str(best_dir) if progress.best_accuracy is not None else None,
        history=progress.history,
        best_accuracy=progress.best_accuracy,
        resumed_from=str(resume_from) if resume_from is not None else None,
    )
