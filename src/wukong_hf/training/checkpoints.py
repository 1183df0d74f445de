"""Resumable checkpoints: Accelerate's state (model as safetensors, optimiser, RNG of every process)
plus progress.json (step = data position, scheduler state, best accuracy, history).

A checkpoint counts only once its COMPLETE marker exists, so a run killed while saving never
resumes from half a folder. Accelerate loads its files with torch.load(weights_only=True); the
progress file is JSON, so no pickle is ever loaded.
"""

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["TrainingProgress", "CheckpointError", "save_checkpoint", "load_checkpoint", "find_checkpoint",
           "list_checkpoints"]

_MARKER = "COMPLETE"
_PROGRESS = "progress.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message says which and what to do."""


@dataclass
class TrainingProgress:
    """Where the run stands: `step` optimiser steps done (the data position follows from it)."""

    step: int = 0
    best_accuracy: float | None = None
    history: list[dict] = field(default_factory=list)
    scheduler: dict = field(default_factory=dict)
    skipped_pairs: int = 0  # unusable training pairs skipped so far, all processes


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders under output_dir/checkpoints, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if (p / _MARKER).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def find_checkpoint(output_dir: str | Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from: None (fresh start), "auto" (latest complete one, if any) or a path."""
    if resume is None or resume == "none":
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        available = ", ".join(str(p) for p in list_checkpoints(output_dir)) or "none"
        raise CheckpointError(
            f"Checkpoint {path} does not exist. Complete checkpoints in {output_dir}: {available}. "
            "Set checkpoint.resume=auto to take the latest, or checkpoint.resume=none to start fresh."
        )
    return path


def save_checkpoint(accelerator, output_dir: str | Path, progress: TrainingProgress, keep_last: int) -> Path:
    """Save state to output_dir/checkpoints/step-NNNNNNNN (all processes call this); returns the folder."""
    path = Path(output_dir) / "checkpoints" / f"step-{progress.step:08d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / _PROGRESS).write_text(json.dumps(asdict(progress), ensure_ascii=False), encoding="utf-8")
        (path / _MARKER).write_text("ok\n")
        for old in list_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def load_checkpoint(accelerator, path: Path) -> TrainingProgress:
    """Restore model, optimiser and RNG from `path`; returns the saved progress. Raises CheckpointError."""
    if not (path / _MARKER).is_file():
        raise CheckpointError(
            f"Checkpoint {path} is incomplete (no {_MARKER} marker: the run stopped while saving it). Delete the "
            "folder and resume from an earlier checkpoint, or set checkpoint.resume=none to start fresh."
        )
    try:
        progress = TrainingProgress(**json.loads((path / _PROGRESS).read_text(encoding="utf-8")))
        accelerator.load_state(str(path))
    except Exception as err:  # any unreadable file: say which checkpoint and how to move on
        raise CheckpointError(
            f"Checkpoint {path} is corrupt and cannot be loaded ({type(err).__name__}: {err}). Delete it to resume "
            "from an earlier checkpoint (checkpoint.resume=auto), or set checkpoint.resume=none to start fresh."
        ) from err
    return progress
