"""TrainConfig: the training run as typed, validated data (YAML file + `section.key=value` overrides).

Every error (unknown key, wrong type, missing data path, impossible combination) is raised by
`TrainConfig.validate()` before any model or data is loaded, with the key that is wrong and what
to write instead.
"""

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "TrainConfig",
    "ModelSection",
    "DataSection",
    "EvalSection",
    "OptimSection",
    "LoopSection",
    "CheckpointSection",
    "LogSection",
    "HubSection",
    "TrainConfigError",
]


class TrainConfigError(ValueError):
    """A training configuration that cannot run; the message names the key and the fix."""


@dataclass
class ModelSection:
    """Which model to train: a preset name or a model folder / Hub id, plus config overrides.

    overrides: WukongConfig fields, dotted for sub-configs, e.g. {"similarity": "global",
    "text_config.hidden_dropout_prob": 0.0}.
    lock_image_tower: LiT. The run freezes the image tower and trains the rest; this field is the
    only place the lock is decided (a model's config.json does not carry it).
    """

    preset: str | None = None
    name_or_path: str | None = None
    overrides: dict = field(default_factory=dict)
    lock_image_tower: bool = True
    gradient_checkpointing: bool = False


@dataclass
class DataSection:
    """Training pairs: a `datasets` folder / Hub id or WebDataset shards, all through one pipeline
    (wukong_hf.data.train_loader).

    image_column / caption_column: None (default) takes the first of image/jpg/jpeg/png/webp and
    caption/txt/text the data has, for every source; a name is used as given.
    augment: the paper's AutoAugment (ImageNet policy), seeded per pair.
    """

    dataset: str | None = None
    shards: str | None = None
    name: str | None = None
    split: str = "train"
    streaming: bool = False
    image_column: str | None = None
    caption_column: str | None = None
    augment: bool = True
    shuffle: bool = True
    num_workers: int = 0


@dataclass
class EvalSection:
    """Zero-shot validation for best-model selection: a labelled set, class names and templates."""

    dataset: str | None = None
    name: str | None = None
    split: str = "validation"
    image_column: str = "image"
    label_column: str = "label"
    class_names: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=lambda: ["一张{c}的照片。"])
    every_steps: int = 0
    batch_size: int = 64


@dataclass
class OptimSection:
    """LAMB with the paper's hyper-parameters (Table 4) and a cosine schedule with linear warm-up."""

    lr: float = 1e-3
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-2
    warmup_steps: int = 0
    max_grad_norm: float = 0.0


@dataclass
class LoopSection:
    """Batch sizes, length of the run, precision and caching.

    batch_size is the micro-batch per process; the negative set of one step is
    batch_size * accumulation_steps * number of processes.
    mixed_precision / accumulation_steps: None (default) leaves them to the launcher
    (`accelerate launch --mixed_precision`, an `accelerate config` file, or
    ACCELERATE_GRADIENT_ACCUMULATION_STEPS), else "no" / 1; a value set here wins over the launcher.
    """

    output_dir: str = "runs/wukong"
    batch_size: int = 32
    accumulation_steps: int | None = None
    max_steps: int = 0
    epochs: int = 1
    seed: int = 0
    mixed_precision: str | None = None
    cache_image_features: bool = False
    log_every: int = 1


@dataclass
class CheckpointSection:
    """Accelerate state checkpoints (model, optimiser, scheduler, RNG, data position)."""

    every_steps: int = 0
    keep_last: int = 2
    resume: str | None = "auto"


@dataclass
class LogSection:
    """Accelerate trackers: "tensorboard" (default), "wandb", or "none"."""

    report_to: str = "tensorboard"
    project: str = "wukong-train"
    progress_bar: bool = True


@dataclass
class HubSection:
    """Optional push of the final model at the end of the run (wukong_hf.hub.push_model)."""

    push: bool = False
    repo_id: str | None = None
    private: bool = False
    dry_run_dir: str | None = None


_SECTIONS = {
    "model": ModelSection,
    "data": DataSection,
    "eval": EvalSection,
    "optim": OptimSection,
    "loop": LoopSection,
    "checkpoint": CheckpointSection,
    "log": LogSection,
    "hub": HubSection,
}


def _type_ok(value: Any, hint: Any) -> bool:
    # Hand-written because the config is plain dataclasses; a schema library would add a dependency for ~20 lines.
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    return isinstance(value, origin or hint)


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _build_section(name: str, cls: type, data: Any):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TrainConfigError(f"Config section {name!r} must be a mapping of keys to values, got {data!r}.")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    data = dict(data)
    for key, value in data.items():
        if key not in known:
            raise TrainConfigError(
                f"Unknown config key {name}.{key}. Valid keys in {name!r}: {', '.join(sorted(known))}."
            )
        if isinstance(value, str) and float in (hints[key], *typing.get_args(hints[key])):
            try:  # YAML 1.1 reads "1e-3" as a string; accept it where a float is meant
                value = float(value)
            except ValueError:
                pass
        if not _type_ok(value, hints[key]):
            raise TrainConfigError(
                f"Config key {name}.{key} must be {_type_name(hints[key])}, got {value!r} "
                f"({type(value).__name__})."
            )
        data[key] = value
    section = cls(**data)
    for key in known:  # YAML "lr: 1" is an int; store it as the float the field declares
        if hints[key] is float and isinstance(getattr(section, key), int):
            setattr(section, key, float(getattr(section, key)))
    return section


@dataclass
class TrainConfig:
    """A full training run. Build with `from_yaml(path, overrides)`, `from_dict(d)` or keyword sections."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    eval: EvalSection = field(default_factory=EvalSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loop: LoopSection = field(default_factory=LoopSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    hub: HubSection = field(default_factory=HubSection)

    def __post_init__(self):
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                setattr(self, name, _build_section(name, cls, value))

    # ----- construction ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Sections as nested dicts, e.g. {"optim": {"lr": 1e-3}}. Unknown sections/keys raise TrainConfigError."""
        if not isinstance(data, dict):
            raise TrainConfigError(f"A training config must be a mapping of sections, got {type(data).__name__}.")
        unknown = set(data) - set(_SECTIONS)
        if unknown:
            raise TrainConfigError(
                f"Unknown config section(s) {', '.join(sorted(unknown))}. Valid sections: {', '.join(_SECTIONS)}."
            )
        return cls(**{name: _build_section(name, sec, data.get(name)) for name, sec in _SECTIONS.items()})

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> "TrainConfig":
        """Read a YAML file, then apply `section.key=value` overrides (values parsed as YAML)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Training config file {path} does not exist; see configs/ for examples.")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise TrainConfigError(f"Training config {path} is not valid YAML: {err}") from err
        return cls.from_dict(apply_overrides(data, overrides))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), allow_unicode=True, sort_keys=False)

    # ----- checks ---------------------------------------------------------------------------
    def validate(self, *, has_train_dataset: bool = False, has_eval_dataset: bool = False) -> "TrainConfig":
        """Raise TrainConfigError / FileNotFoundError for anything that would fail later; returns self."""
        m, d, e, o, lp = self.model, self.data, self.eval, self.optim, self.loop
        if (m.preset is None) == (m.name_or_path is None):
            raise TrainConfigError("Set exactly one of model.preset (e.g. tiny-global) or model.name_or_path.")
        if m.preset is not None:
            from ..presets import list_presets

            if m.preset not in list_presets():
                raise TrainConfigError(f"Unknown model.preset {m.preset!r}. Available: {', '.join(list_presets())}.")
        if not has_train_dataset:
            if d.dataset is None and d.shards is None:
                raise TrainConfigError(
                    "No training data: set data.dataset (a datasets folder or Hub id) or data.shards "
                    "(WebDataset tar pattern), or pass train_dataset= to train()."
                )
            if d.dataset is not None and d.dataset.startswith((".", "/", "~")) and not Path(d.dataset).expanduser().exists():
                raise FileNotFoundError(f"data.dataset path {d.dataset} does not exist.")
        if not has_train_dataset and d.dataset is not None and d.shards is not None:
            raise TrainConfigError("Set one of data.dataset (a datasets folder or Hub id) or data.shards (WebDataset "
                                   "tar shards), not both.")
        if not has_train_dataset and d.shards is not None:
            import glob

            shards = Path(d.shards).expanduser()
            found = sorted(shards.glob("*.tar")) if shards.is_dir() else glob.glob(str(shards))
            if not found:
                raise FileNotFoundError(f"data.shards {d.shards} matches no .tar shards; give the folder written by "
                                        "`wukong data download` or a glob such as /data/wukong/*.tar.")
            if lp.max_steps == 0:
                raise TrainConfigError("data.shards is a stream without a known length: set loop.max_steps.")
            if lp.cache_image_features:
                raise TrainConfigError("loop.cache_image_features needs data.dataset: one pass over data.shards "
                                       "sees every image once, so there is nothing to reuse.")
        if not has_eval_dataset and e.dataset is not None and e.dataset.startswith((".", "/", "~")):
            if not Path(e.dataset).expanduser().exists():
                raise FileNotFoundError(f"eval.dataset path {e.dataset} does not exist.")
        if (has_eval_dataset or e.dataset is not None) and not e.class_names:
            raise TrainConfigError("Zero-shot validation needs eval.class_names (one Chinese name per label id).")
        if not e.templates or not all("{c}" in t for t in e.templates):
            raise TrainConfigError("Every eval.templates entry needs a '{c}' where the class name goes, e.g. '{c}的照片。'.")
        for key, value in [("loop.batch_size", lp.batch_size), ("loop.accumulation_steps", lp.accumulation_steps),
                           ("loop.epochs", lp.epochs), ("loop.log_every", lp.log_every)]:
            if value is not None and value < 1:
                raise TrainConfigError(f"{key} must be at least 1, got {value}.")
        if lp.max_steps < 0 or o.warmup_steps < 0 or self.checkpoint.every_steps < 0:
            raise TrainConfigError("loop.max_steps, optim.warmup_steps and checkpoint.every_steps must be >= 0.")
        if o.lr <= 0:
            raise TrainConfigError(f"optim.lr must be positive, got {o.lr}.")
        if lp.mixed_precision not in (None, "no", "fp16", "bf16", "fp8"):
            raise TrainConfigError(f"loop.mixed_precision must be no, fp16, bf16 or fp8, got {lp.mixed_precision!r}.")
        if self.log.report_to not in ("tensorboard", "wandb", "none"):
            raise TrainConfigError(f"log.report_to must be tensorboard, wandb or none, got {self.log.report_to!r}.")
        if lp.cache_image_features and (not m.lock_image_tower or d.augment):
            raise TrainConfigError(
                "loop.cache_image_features needs a locked image tower and data.augment=false "
                "(augmented or trainable towers give new features every epoch)."
            )
        if self.hub.push and not self.hub.repo_id:
            raise TrainConfigError("hub.push=true needs hub.repo_id (e.g. your-name/wukong-vit-b-32-zh).")
        return self


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply `section.key=value` strings to a nested config dict; values are parsed as YAML."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in (data or {}).items()}
    for item in overrides:
        if "=" not in item:
            raise TrainConfigError(f"Override {item!r} must look like section.key=value, e.g. optim.lr=1e-3.")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2:
            raise TrainConfigError(f"Override {item!r} must name a section and a key, e.g. loop.max_steps=100.")
        value = yaml.safe_load(raw) if raw.strip() else None
        if parts[0] == "model" and parts[1] == "overrides" and len(parts) > 2:
            # model.overrides.text_config.hidden_dropout_prob=0 -> dotted key inside the overrides mapping
            section = data.setdefault("model", {})
            section.setdefault("overrides", {})
            section["overrides"] = {**section["overrides"], ".".join(parts[2:]): value}
            continue
        if len(parts) != 2:
            raise TrainConfigError(f"Override {item!r} has too many dots; use section.key=value.")
        section = data.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise TrainConfigError(f"Config section {parts[0]!r} must be a mapping.")
        section[parts[1]] = value
    return data
