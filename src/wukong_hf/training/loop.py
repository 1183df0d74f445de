"""`train(config)`: the training loop, top to bottom: model, data, optimiser, schedule, resume,
steps (with checkpoints, logging, zero-shot validation), export, optional push.

Runs unchanged on one CPU, one GPU, or many processes under `accelerate launch`.
"""

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.dataset_source import open_dataset
from ..data.train_loader import resolve_columns
from .batches import plan_steps
from .checkpoints import TrainingProgress, find_checkpoint, load_checkpoint, save_checkpoint
from .config import DataSection, LoopSection, ModelSection, TrainConfig, TrainConfigError
from .recipe import build_optimizer, build_scheduler
from .step import DualEncoderStep, TowerOutputCache, train_step

__all__ = ["train", "TrainResult", "load_model_for_training", "load_train_dataset", "zero_shot_accuracy",
           "resolve_launch_settings", "FINISHED_FILE"]

# Written last by a run that reached its final step; a rerun with checkpoint.resume=auto then stops at once.
FINISHED_FILE = "finished.json"


@dataclass
class TrainResult:
    """What a run produced: folders (save_pretrained: safetensors + processor) and the logged history."""

    output_dir: str
    final_model_dir: str
    best_model_dir: str | None = None
    history: list[dict] = field(default_factory=list)
    best_accuracy: float | None = None
    resumed_from: str | None = None
    already_finished: bool = False
    launch_settings: dict = field(default_factory=dict)
    skipped_pairs: int = 0
    global_batch: int | None = None  # pairs per optimiser step over all processes (the loss's negative set)


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


def load_train_dataset(section: DataSection):
    """The training pairs named by data.dataset (save_to_disk folder, dataset repository folder or Hub id)."""
    dataset = open_dataset(section.dataset, name=section.name, split=section.split, streaming=section.streaming)
    _check_train_columns(dataset, section)
    return dataset


def _check_train_columns(dataset, section: DataSection) -> None:
    names = getattr(dataset, "column_names", None)
    if names is not None:  # some streamed datasets do not know their columns before the first row
        try:
            resolve_columns(names, section.image_column, section.caption_column)
        except ValueError as err:
            raise TrainConfigError(str(err)) from None


def _check_eval_columns(dataset, section) -> None:
    names = dataset.column_names
    for column, key in ((section.image_column, "image_column"), (section.label_column, "label_column")):
        if column not in names:
            raise TrainConfigError(f"The eval dataset has no column {column!r} (columns: {names}); set eval.{key}.")


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


# What `accelerate launch` (its flags or an `accelerate config` file) hands the script.
_LAUNCHER_ENV = {"mixed_precision": "ACCELERATE_MIXED_PRECISION",
                 "accumulation_steps": "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"}
_DEFAULTS = {"mixed_precision": "no", "accumulation_steps": 1}


def resolve_launch_settings(loop: LoopSection, environ: dict | None = None) -> dict[str, dict]:
    """Mixed precision and gradient accumulation for this run, and where each came from.

    The training config wins when it sets the value (loop.mixed_precision, loop.accumulation_steps are
    not None); otherwise the launcher's environment (`accelerate launch --mixed_precision`, an
    `accelerate config` file, ACCELERATE_GRADIENT_ACCUMULATION_STEPS); otherwise "no" / 1.
    Returns {name: {"value", "source" ("training config" | "launcher" | "default"), "message"}}.
    """
    environ = os.environ if environ is None else environ
    settings = {}
    for name, variable in _LAUNCHER_ENV.items():
        configured, launched = getattr(loop, name), environ.get(variable)
        if launched is not None and name == "accumulation_steps":
            if not launched.isdigit() or int(launched) < 1:
                raise TrainConfigError(f"{variable}={launched!r} from the launcher is not a whole number >= 1.")
            launched = int(launched)
        elif launched is not None and launched not in ("no", "fp16", "bf16", "fp8"):
            raise TrainConfigError(f"{variable}={launched!r} from the launcher is not one of no, fp16, bf16, fp8.")
        if configured is not None:
            value, source = configured, "training config"
            message = f"from the training config, loop.{name}"
            if launched is not None and launched != configured:
                message += f"; overrides the launcher's {variable}={launched}"
        elif launched is not None:
            value, source = launched, "launcher"
            message = f"from the launcher: {variable}={launched}, set by accelerate launch or an accelerate config file"
        else:
            value, source = _DEFAULTS[name], "default"
            how = "accelerate launch --mixed_precision" if name == "mixed_precision" else variable
            message = f"default; set loop.{name} or {how}"
        settings[name] = {"value": value, "source": source, "message": message}
    return settings


def _build_accelerator(config: TrainConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs, GradientAccumulationPlugin, ProjectConfiguration

    log_with = None if config.log.report_to == "none" else config.log.report_to
    # Parameters no loss term reaches (token reduction under a global loss) must not stall DDP.
    # mixed_precision is passed resolved (resolve_launch_settings): the config's value, else the launcher's.
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
        # Accumulation is GradCache in train_step (loop.accumulation_steps, resolved above). Accelerate's own would
        # read ACCELERATE_GRADIENT_ACCUMULATION_STEPS (even over gradient_accumulation_steps=1) and divide every loss
        # by it in backward(); a plugin of one step is the way to keep it out.
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1),
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
    from ..model_folders import save_model_folder

    save_model_folder(folder, model, processor)


def _finished_run(config: TrainConfig) -> TrainResult | None:
    """The result of the finished run in loop.output_dir when this one would only resume it (resume=auto)."""
    out = Path(config.loop.output_dir)
    marker = out / FINISHED_FILE
    if config.checkpoint.resume != "auto" or not marker.is_file():
        return None
    info = json.loads(marker.read_text(encoding="utf-8"))
    history_file = out / "history.json"
    history = json.loads(history_file.read_text(encoding="utf-8")) if history_file.is_file() else []
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{out} holds a finished run ({info['step']} steps; final model in {info['final_model_dir']}): nothing "
              "to do. To train again, choose a new loop.output_dir, or set checkpoint.resume=none to start over "
              "here (final/ is then overwritten).")
    return TrainResult(output_dir=str(out), final_model_dir=info["final_model_dir"],
                       best_model_dir=info.get("best_model_dir"), history=history,
                       best_accuracy=info.get("best_accuracy"), already_finished=True,
                       launch_settings=info.get("launch_settings", {}), skipped_pairs=info.get("skipped_pairs", 0),
                       global_batch=info.get("global_batch"))


def train(config: TrainConfig, *, train_dataset=None, eval_dataset=None,
          on_step: Callable[[int, int, float], None] | None = None) -> TrainResult:
    """Train a Wukong model with the paper's LiT recipe as configured; resumable.

    Args:
        config: the run (see TrainConfig; validated before anything loads). Not modified.
        train_dataset: optional datasets.Dataset / IterableDataset with an image and a caption column
            (data.image_column / data.caption_column, or found by name), replacing data.dataset.
        eval_dataset: optional datasets.Dataset with image and integer label columns for zero-shot
            validation (class names and templates from config.eval), replacing eval.dataset.
        on_step: called on the main process after every optimiser step with (step, total_steps,
            seconds since the first step of this call began).

    Returns:
        TrainResult: output_dir, final_model_dir, best_model_dir (or None), history (one dict per
        logged step: step, loss, lr, temperature, samples_per_s, skipped_pairs, and val_accuracy when
        evaluated), launch_settings (mixed precision and accumulation with their source), and
        already_finished (True when loop.output_dir held a finished run and nothing was trained).
    """
    config.validate(has_train_dataset=train_dataset is not None, has_eval_dataset=eval_dataset is not None)
    finished = _finished_run(config)
    if finished is not None:
        return finished
    launch = resolve_launch_settings(config.loop)
    # The run as it runs: the launcher's settings written into (a copy of) the config, so train_config.yaml records them.
    config = dataclasses.replace(config, loop=dataclasses.replace(
        config.loop, mixed_precision=launch["mixed_precision"]["value"],
        accumulation_steps=launch["accumulation_steps"]["value"]))
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    lp, out = config.loop, Path(config.loop.output_dir)
    accelerator = _build_accelerator(config)
    for name, label in (("mixed_precision", "mixed precision"), ("accumulation_steps", "gradient accumulation steps")):
        accelerator.print(f"{label}: {launch[name]['value']} ({launch[name]['message']})")
    set_seed(lp.seed)
    model, processor = load_model_for_training(config.model)
    locked = config.model.lock_image_tower

    # ----- data --------------------------------------------------------------------------------
    shards = config.data.shards if train_dataset is None else None
    if shards is None and train_dataset is None:
        train_dataset = load_train_dataset(config.data)
    elif train_dataset is not None:
        _check_train_columns(train_dataset, config.data)
    if eval_dataset is None and config.eval.dataset is not None:
        eval_dataset = open_dataset(config.eval.dataset, name=config.eval.name, split=config.eval.split)
    if eval_dataset is not None:
        _check_eval_columns(eval_dataset, config.eval)
    plan = plan_steps(train_dataset, shards, processor, config.data, micro_batch=lp.batch_size,
                      accumulation=lp.accumulation_steps, rank=accelerator.process_index,
                      world_size=accelerator.num_processes, seed=lp.seed, max_steps=lp.max_steps, epochs=lp.epochs)
    total_steps = plan.total_steps

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
        (out / FINISHED_FILE).unlink(missing_ok=True)  # this run is not finished until it writes it again
        (out / "train_config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    if config.log.report_to != "none":
        accelerator.init_trackers(config.log.project, config=_flat_hparams(config))

    # Built after the resume: its private generator keeps the restored global RNG (dropout's) untouched.
    loader = plan.loader(progress.step)
    tower_cache = TowerOutputCache() if lp.cache_image_features else None

    # ----- steps -------------------------------------------------------------------------------
    best_dir = out / "best"
    bar = tqdm(total=total_steps, initial=progress.step, desc="training", unit="step",
               disable=not (accelerator.is_local_main_process and config.log.progress_bar))
    step_module.train()
    global_batch = lp.batch_size * lp.accumulation_steps * accelerator.num_processes
    started = loop_started = time.perf_counter()
    skipped_since_log = 0
    batches = iter(loader)
    while progress.step < total_steps:
        micro_batches = next(batches, None)
        # Every process's micro-batch j cut to the same size (unusable pairs are skipped, streams can end).
        micro_batches = aligned_across_processes(micro_batches, lp.accumulation_steps, accelerator)
        if micro_batches is None:
            accelerator.print(f"the training stream ended after {progress.step} of {total_steps} steps")
            break
        skipped_since_log += sum(mb.get("skipped", 0) for mb in micro_batches)
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
        if on_step is not None and accelerator.is_main_process:
            on_step(progress.step, total_steps, time.perf_counter() - loop_started)

        evaluate_now = eval_dataset is not None and (
            (config.eval.every_steps and progress.step % config.eval.every_steps == 0) or progress.step == total_steps
        )
        if progress.step % lp.log_every == 0 or evaluate_now or progress.step == total_steps:
            elapsed = time.perf_counter() - started
            progress.skipped_pairs += _summed(skipped_since_log, accelerator)
            skipped_since_log = 0
            record = {
                "step": progress.step,
                "loss": float(accelerator.reduce(loss, reduction="mean")),
                "lr": scheduler.get_last_lr()[0],
                "temperature": float(1.0 / model.inverse_temperature.detach()),
                "samples_per_s": global_batch * lp.log_every / max(elapsed, 1e-9),
                "skipped_pairs": progress.skipped_pairs,
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
            progress.skipped_pairs += _summed(skipped_since_log, accelerator)
            skipped_since_log = 0
            progress.scheduler = scheduler.state_dict()
            save_checkpoint(accelerator, out, progress, config.checkpoint.keep_last)
    bar.close()
    progress.skipped_pairs += _summed(skipped_since_log, accelerator)
    if progress.skipped_pairs:
        accelerator.print(f"skipped {progress.skipped_pairs} unusable training pairs (undecodable image or empty "
                          "caption; the first were logged above); history.json counts them per logged step")

    # ----- export --------------------------------------------------------------------------------
    final_dir = out / "final"
    settings = {name: {k: v for k, v in s.items() if k != "message"} for name, s in launch.items()}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _export(model, processor, final_dir)
        (out / "history.json").write_text(json.dumps(progress.history, indent=1, ensure_ascii=False), encoding="utf-8")
        # Written last (also when a stream ended early): a rerun with resume=auto reports it and trains nothing.
        finished = {"step": progress.step, "final_model_dir": str(final_dir),
                    "best_model_dir": str(best_dir) if progress.best_accuracy is not None else None,
                    "best_accuracy": progress.best_accuracy, "launch_settings": settings,
                    "skipped_pairs": progress.skipped_pairs, "global_batch": global_batch}
        (out / FINISHED_FILE).write_text(json.dumps(finished, indent=1, ensure_ascii=False), encoding="utf-8")
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
        launch_settings=settings,
        skipped_pairs=progress.skipped_pairs,
        global_batch=global_batch,
    )


def _summed(count: int, accelerator) -> int:
    """count summed over all processes (every process calls this at the same point)."""
    if accelerator.num_processes == 1:
        return count
    return int(accelerator.reduce(torch.tensor(count, device=accelerator.device), reduction="sum"))
