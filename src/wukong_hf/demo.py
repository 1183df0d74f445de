"""`wukong demo` and `wukong visualize`: the whole system on a built-in set, and Figure 4 for any model.

run_demo: synthetic Chinese shapes set -> wukong_hf.training.train (the real loop) -> save_pretrained
-> AutoModel reload -> zero-shot classification on held-out colour-shape combinations and
retrieval (wukong_hf.evaluation) -> transformers zero-shot pipeline on a few images -> word-patch
alignment pictures and the share of label-token patches on the object. CPU, no download.

    wukong demo                                      # writes wukong-demo/; about a minute on 2 quiet CPU cores
    wukong visualize --model wukong-demo/train/final --image cat.png --label 猫
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

__all__ = ["DemoSettings", "DemoResult", "run_demo", "visualize_alignment", "register", "ZERO_SHOT_TEMPLATES",
           "REFERENCE", "SlowRunNote"]

# Chinese prompts for zero-shot classification of the shapes ({c} = "红三角").
ZERO_SHOT_TEMPLATES = ["{c}", "一个{c}", "图片里有一个{c}"]

# What `wukong demo --seed S` printed at its defaults for seeds 0-9 on the reference machine: (lowest, highest).
# From benchmarks/demo_run.py (benchmarks/results/demo_run.json; tests/test_demo.py keeps the two equal), quoted in
# docs/demo.md. A given seed's numbers can differ on another machine (thread count and CPU vector width change the
# order of float sums, and 400 steps amplify it), so the demo states ranges, not one figure.
REFERENCE = {
    "machine": "2-core CPU sandbox (AMD EPYC), no other jobs",
    "seeds": "0-9",
    "zero_shot_top1": (20.0, 30.5),
    "held_out_only_top1": (96.5, 100.0),
    "alignment_share_on_object": (32.2, 76.6),
    "pipeline_right": (0, 3),
    "train_seconds_per_step": (0.062, 0.068),
    "total_seconds": (28, 31),
}
SLOW_FACTOR = 3.0  # a training step this many times slower than the reference machine's slowest gets a note


@dataclass
class DemoSettings:
    """Sizes of the demo run; the defaults finish in a few minutes on 2 CPU cores.

    steps: optimiser steps. train_size / eval_size: generated training pairs / held-out images.
    """

    out: str = "wukong-demo"
    steps: int = 400
    similarity: str = "token_wise"
    train_size: int = 4000
    eval_size: int = 200
    batch_size: int = 64
    lr: float = 1e-2
    seed: int = 0
    alignment_images: int = 8
    pipeline_images: int = 4
    progress: bool = True

    def check(self) -> "DemoSettings":
        from .similarity import SIMILARITY_KINDS

        if self.similarity not in SIMILARITY_KINDS:
            raise ValueError(f"--similarity must be global or token_wise, got {self.similarity!r}.")
        if self.steps < 1:
            raise ValueError(f"--steps must be at least 1, got {self.steps}.")
        if self.train_size < self.batch_size:
            raise ValueError(
                f"train_size={self.train_size} is smaller than one batch of {self.batch_size}; raise train_size or "
                "lower batch_size."
            )
        if self.eval_size < 2:
            raise ValueError(f"eval_size must be at least 2, got {self.eval_size}.")
        return self


@dataclass
class DemoResult:
    """What the demo measured and wrote (paths are strings; percentages 0-100)."""

    settings: dict
    seconds: dict = field(default_factory=dict)
    zero_shot: dict = field(default_factory=dict)
    retrieval: dict = field(default_factory=dict)
    alignment: dict | None = None
    pipeline: list = field(default_factory=list)
    paths: dict = field(default_factory=dict)
    final_loss: float | None = None
    slow_note: str | None = None


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _retrieval_set(examples, name: str):
    """Captions of `examples` as a RetrievalSet. A caption describes every image with its colour and
    shape and, if it names one, its background ("一个红三角" fits a red triangle on any background);
    position and size are not in the words."""
    from .evaluation.retrieval_sets import RetrievalSet

    def describes(caption_of, image) -> bool:
        return (caption_of.colour, caption_of.shape) == (image.colour, image.shape) and (
            not caption_of.names_background or caption_of.background == image.background
        )

    encoded = [_png_bytes(e.image) for e in examples]
    return RetrievalSet(
        name=name,
        split="held_out",
        image_ids=[str(i) for i in range(len(examples))],
        image_bytes=[partial(bytes, b) for b in encoded],
        text_ids=[str(i) for i in range(len(examples))],
        texts=[e.caption for e in examples],
        text_images=[[i for i, image in enumerate(examples) if describes(e, image)] for e in examples],
    )


def _labelled(examples, classnames: list[str]):
    from .evaluation.image_sources import LabelledImages

    return LabelledImages(
        loaders=[partial(lambda image: image, e.image) for e in examples],
        labels=[classnames.index(e.label) for e in examples],
        ids=[str(i) for i in range(len(examples))],
    )


class SlowRunNote:
    """on_step callback for train(): says once, while training, when steps run much slower than on the
    reference machine, with the time left (the progress bar shows the same ETA; this says why it is long)."""

    def __init__(self, write=print, reference_seconds: float = REFERENCE["train_seconds_per_step"][1],
                 factor: float = SLOW_FACTOR, first_check: int = 10):
        self.write, self.reference, self.factor, self.first_check = write, reference_seconds, factor, first_check
        self.noted = False
        self.message: str | None = None

    def __call__(self, step: int, total_steps: int, seconds: float) -> None:
        if self.noted or step < self.first_check or step % self.first_check:
            return
        per_step = seconds / step
        if per_step < self.factor * self.reference:
            return
        self.noted = True
        left = per_step * (total_steps - step)
        self.message = (
            f"note: training runs at {per_step:.2f} s/step, {per_step / self.reference:.0f}x slower than on "
            f"{REFERENCE['machine']} ({self.reference:.2f} s/step): about {left / 60:.0f} min left. Other jobs "
            "holding the CPU, or fewer cores, slow it down; `wukong demo --steps 100` is shorter (and learns less)."
        )
        self.write(self.message)


def _train_config(settings: DemoSettings, output_dir: Path):
    from .training import TrainConfig

    return TrainConfig.from_dict({
        # No pretrained image tower is available offline, so both towers train (FILIP-style from
        # scratch); a locked random tower would keep random features (LiT needs a pretrained one).
        "model": {"preset": "demo-token-wise", "lock_image_tower": False,
                  "overrides": {"similarity": settings.similarity}},
        # AutoAugment changes colours (solarize, posterize, colour jitter): captions name colours.
        "data": {"augment": False},
        "optim": {"lr": settings.lr, "weight_decay": 0.05, "warmup_steps": min(10, settings.steps // 10)},
        "loop": {"output_dir": str(output_dir), "batch_size": settings.batch_size, "max_steps": settings.steps,
                 "seed": settings.seed},
        "checkpoint": {"every_steps": 0, "resume": None},
        "log": {"report_to": "none", "progress_bar": settings.progress},
    })


def run_demo(settings: DemoSettings | None = None, **overrides) -> DemoResult:
    """Run the whole demo and write its files under settings.out.

    Returns a DemoResult (also written as summary.json): zero-shot top-1 on held-out combinations
    vs chance, retrieval recall, alignment share vs object area, timings and output paths.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoProcessor, pipeline

    from .data.synthetic import SyntheticShapes
    from .evaluation.retrieval import evaluate_retrieval
    from .evaluation.zero_shot import zero_shot_classification
    from .training import train

    settings = (settings or DemoSettings(**overrides)).check()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(settings=asdict(settings))
    started = clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        result.seconds[name] = round(now - clock, 2)
        clock = now

    # ----- data ---------------------------------------------------------------------------------
    generator = SyntheticShapes(image_size=64, seed=settings.seed)
    train_dataset = generator.to_dataset("train", settings.train_size, progress=settings.progress)
    held_out = generator.examples("held_out", settings.eval_size, progress=settings.progress)
    # The held-out images as files: the search folder of `wukong space --images OUT/held_out`.
    held_out_dir = out / "held_out"
    held_out_dir.mkdir(exist_ok=True)
    for i, example in enumerate(held_out):
        example.image.save(held_out_dir / f"{i:03d}-{example.label}.png")
    result.paths["held_out"] = str(held_out_dir)
    lap("data")

    # ----- training through the real loop -------------------------------------------------------
    from tqdm.auto import tqdm as _tqdm

    slow_note = SlowRunNote(write=_tqdm.write if settings.progress else print)
    trained = train(_train_config(settings, out / "train"), train_dataset=train_dataset, on_step=slow_note)
    result.slow_note = slow_note.message
    result.final_loss = trained.history[-1]["loss"] if trained.history else None
    model_dir = Path(trained.final_model_dir)
    lap("train")

    # ----- reload from the safetensors export ---------------------------------------------------
    model = AutoModel.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    result.paths["model"] = str(model_dir)
    result.paths["weights"] = str(model_dir / "model.safetensors")
    lap("reload")

    # ----- evaluation: zero-shot on unseen combinations, retrieval ------------------------------
    classnames = generator.labels
    report = zero_shot_classification(model, processor, _labelled(held_out, classnames), classnames,
                                      ZERO_SHOT_TEMPLATES, dataset_name="synthetic-shapes", split="held_out")
    held_names = generator.held_out_labels
    report_held = zero_shot_classification(model, processor, _labelled(held_out, held_names), held_names,
                                           ZERO_SHOT_TEMPLATES, dataset_name="synthetic-shapes", split="held_out")
    result.zero_shot = {
        "classes": len(classnames),
        "chance": 100.0 / len(classnames),
        "top1": report["ensemble"]["top1"],
        "top1_single_prompt": report["single_prompt"]["top1"],
        "top5": report["ensemble"]["top5"],
        "held_out_only_classes": len(held_names),
        "held_out_only_top1": report_held["ensemble"]["top1"],
        "held_out_only_chance": 100.0 / len(held_names),
        "held_out_combinations": held_names,
        "templates": ZERO_SHOT_TEMPLATES,
    }
    retrieval = evaluate_retrieval(model, processor, _retrieval_set(held_out, "synthetic-shapes"))
    result.retrieval = retrieval["metrics"]
    lap("evaluate")

    # ----- the transformers pipeline on a few images --------------------------------------------
    classifier = pipeline("zero-shot-image-classification", model=model, image_processor=processor.image_processor,
                          tokenizer=processor.tokenizer)
    for example in tqdm(held_out[: settings.pipeline_images], desc="pipeline", unit="img", disable=not settings.progress):
        best = classifier(example.image, candidate_labels=classnames, hypothesis_template="{}")[0]
        result.pipeline.append({"true": example.label, "predicted": best["label"], "score": round(best["score"], 4)})
    lap("pipeline")

    # ----- word-patch alignment (paper Figure 4) ------------------------------------------------
    if model.similarity_rule.uses_tokens:
        result.alignment, result.paths["alignment_png"], result.paths["alignment_json"] = _alignment_report(
            model, processor, held_out, out, settings)
    lap("alignment")

    result.seconds["total"] = round(time.perf_counter() - started, 2)
    result.paths["summary"] = str(out / "summary.json")
    Path(result.paths["summary"]).write_text(json.dumps(asdict(result), indent=1, ensure_ascii=False), encoding="utf-8")
    return result


def _alignment_report(model, processor, examples, out: Path, settings: DemoSettings):
    """Alignment of every held-out image with its label; PNG grid of the first few; JSON of all."""
    from tqdm.auto import tqdm

    from .visualize import alignment_grid, background_tokens, draw_alignment, mask_share, word_patch_alignments

    on_object = highlighted = 0
    area = 0.0
    by_position: dict[int, list[int]] = {}  # label token position (1 = first character) -> [on object, highlighted]
    by_background: dict[str, dict[str, int]] = {}  # background name -> token role -> background patches
    rows = []
    alignments = []
    batch = 64
    for start in tqdm(range(0, len(examples), batch), desc="word-patch alignment", unit="batch",
                      disable=not settings.progress):
        chunk = examples[start:start + batch]
        found = word_patch_alignments(model, processor, [e.image for e in chunk], [e.label for e in chunk])
        for example, alignment in zip(chunk, found):
            inside, total = mask_share(alignment, example.mask)
            for position, token in enumerate(alignment.label_tokens, start=1):
                counts = by_position.setdefault(position, [0, 0])
                token_inside, token_total = mask_share(alignment, example.mask, [token])
                counts[0], counts[1] = counts[0] + token_inside, counts[1] + token_total
            on_object, highlighted, area = on_object + inside, highlighted + total, area + float(example.mask.mean())
            roles = by_background.setdefault(example.background, {})
            for role, n in background_tokens(alignment, example.mask).items():
                roles[role] = roles.get(role, 0) + n
            rows.append({"label": example.label, "tokens": alignment.tokens,
                         "token_index": alignment.token_index.tolist(),
                         "share_on_object": inside / total if total else None,
                         "object_area_fraction": float(example.mask.mean())})
            alignments.append(alignment)
    count = settings.alignment_images
    panels = [draw_alignment(e.image, a, scale=4, object_mask=e.mask) for e, a in zip(examples[:count], alignments[:count])]
    titles = [f"#{i} on object {r['share_on_object'] or 0:.0%}" for i, r in enumerate(rows[:count])]
    png = out / "alignment.png"
    alignment_grid(panels, titles).save(png)
    pixels = sum(e.mask.size for e in examples)
    summary = {
        "images": len(examples),
        "share_on_object": on_object / highlighted if highlighted else 0.0,
        "object_area_fraction": area / len(examples),
        "highlighted_fraction": highlighted / pixels,
        # Which label character carries the alignment: e.g. the colour character vs the shape word.
        "share_on_object_by_label_position": {
            str(k): {"share_on_object": v[0] / v[1] if v[1] else None, "highlighted_fraction": v[1] / pixels}
            for k, v in sorted(by_position.items())
        },
        # Which token background patches (no object pixel) take, per background: [CLS]/[SEP] is the
        # picture Figure 4 shows; a label role is a background patch highlighted as the object.
        "background_patch_tokens": {name: _shares(roles) for name, roles in sorted(by_background.items())},
        "legend_first_image": alignments[0].legend() if alignments else "",
    }
    json_path = out / "alignment.json"
    json_path.write_text(json.dumps({"summary": summary, "images": rows}, ensure_ascii=False), encoding="utf-8")
    return summary, str(png), str(json_path)


def _shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: round(v / total, 4) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])} if total else {}


def format_summary(result: DemoResult) -> str:
    """The short table `wukong demo` prints."""
    z, r, a = result.zero_shot, result.retrieval, result.alignment
    lines = [
        "",
        "wukong demo: summary",
        f"  similarity head         {result.settings['similarity']}  ({result.settings['steps']} steps, final loss "
        f"{result.final_loss:.3f})" if result.final_loss is not None else "",
        f"  zero-shot top-1         {z['top1']:.1f}% on {z['classes']} classes, held-out combinations "
        f"(chance {z['chance']:.1f}%, {z['top1'] / z['chance']:.1f}x)",
        f"  zero-shot top-1 (4 new) {z['held_out_only_top1']:.1f}% among the {z['held_out_only_classes']} held-out "
        f"combinations only (chance {z['held_out_only_chance']:.1f}%)",
        f"  retrieval R@1           image->text {r.get('i2t_R@1', 0):.1f}%  text->image {r.get('t2i_R@1', 0):.1f}%  "
        f"(mean recall {r.get('MR', 0):.1f})",
    ]
    if a is not None:
        lines.append(f"  word-patch alignment    {a['share_on_object']:.1%} of label-token patch area on the object "
                     f"(object covers {a['object_area_fraction']:.1%} of the image)")
        positions = a.get("share_on_object_by_label_position", {})
        parts = [f"{k}: {v['share_on_object']:.0%} on object / {v['highlighted_fraction']:.0%} of image"
                 for k, v in positions.items() if v["share_on_object"] is not None]
        if parts:
            lines.append(f"    by label character    {'; '.join(parts)}")
        backgrounds = a.get("background_patch_tokens", {})
        parts = [f"{name}: " + ", ".join(f"{role} {share:.0%}" for role, share in list(roles.items())[:2] if share >= 0.01)
                 for name, roles in backgrounds.items()]
        if parts:
            lines.append(f"    background patches    {'; '.join(parts)}")
    else:
        lines.append("  word-patch alignment    skipped: needs the token-wise head (--similarity token_wise)")
    hits = sum(p["true"] == p["predicted"] for p in result.pipeline)
    lines.append(f"  pipeline                {hits}/{len(result.pipeline)} images right "
                 f"({', '.join(p['predicted'] for p in result.pipeline)})")
    lines.append(f"  time                    {result.seconds['total']:.0f} s total "
                 f"({', '.join(f'{k} {v:.0f}s' for k, v in result.seconds.items() if k != 'total')})")
    lines.extend(_reference_lines(result))
    lines.append("  wrote")
    for name, path in result.paths.items():
        lines.append(f"    {name:14s} {path}")
    return "\n".join(line for line in lines if line)


# The settings REFERENCE was measured at: only a run at these can be compared with it.
_REFERENCE_SETTINGS = ("steps", "similarity", "train_size", "eval_size", "batch_size", "lr", "pipeline_images")


def _reference_lines(result: DemoResult) -> list[str]:
    """What the reference machine printed for seeds 0-9 at the default settings (ranges), and any slow-run note."""
    defaults = asdict(DemoSettings())
    lines = []
    if all(result.settings.get(k) == defaults[k] for k in _REFERENCE_SETTINGS):
        ref = REFERENCE
        lines += [
            f"  seeds {ref['seeds']} printed      zero-shot top-1 {ref['zero_shot_top1'][0]:.1f}-{ref['zero_shot_top1'][1]:.1f}%, "
            f"4 new {ref['held_out_only_top1'][0]:.1f}-{ref['held_out_only_top1'][1]:.1f}%, label-token area on the "
            f"object {ref['alignment_share_on_object'][0]:.1f}-{ref['alignment_share_on_object'][1]:.1f}%, pipeline "
            f"{ref['pipeline_right'][0]}-{ref['pipeline_right'][1]}/4, {ref['total_seconds'][0]}-{ref['total_seconds'][1]} s",
            f"                          on {ref['machine']}; one seed's numbers vary between machines",
        ]
    if result.slow_note:
        lines.append(f"  {result.slow_note}")
    return lines


def visualize_alignment(model_name_or_path: str, image_path: str, label: str, out: str | None = None,
                        scale: float = 1.0) -> tuple[str, object]:
    """Draw the word-patch alignment of `label` on an image file with any token-wise model.

    Returns (path of the PNG written, WordPatchAlignment). The PNG has the image's size times `scale`.
    """
    from PIL import Image, UnidentifiedImageError

    from .model_folders import load_model_and_processor
    from .visualize import _check_token_wise, draw_alignment, word_patch_alignment

    path = Path(image_path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file {path} does not exist; give --image an existing PNG or JPEG file.")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"Cannot read {path} as an image ({err}); give a PNG or JPEG file.") from err
    model, processor = load_model_and_processor(model_name_or_path)
    _check_token_wise(model)
    alignment = word_patch_alignment(model, processor, image, label)
    target = Path(out) if out else path.with_name(f"{path.stem}-alignment.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    draw_alignment(image, alignment, scale=scale).save(target)
    return str(target), alignment


# ----- command line -------------------------------------------------------------------------------
def _cmd_demo(args) -> int:
    settings = DemoSettings(out=args.out, steps=args.steps, similarity=args.similarity, train_size=args.train_size,
                            eval_size=args.eval_size, seed=args.seed)
    result = run_demo(settings)
    print(format_summary(result))
    return 0


def _cmd_visualize(args) -> int:
    path, alignment = visualize_alignment(args.model, args.image, args.label, args.out, args.scale)
    share = float(alignment.highlighted.float().mean())
    print(f"tokens: {alignment.legend()}  (* = label token)")
    print(f"{share:.0%} of the patches match a label token best; wrote {path}")
    return 0


def register(subparsers) -> None:
    defaults = DemoSettings()
    p = subparsers.add_parser("demo", help="train, evaluate, export and visualise a small model on a built-in "
                                           "Chinese shapes set (CPU, no download, a few minutes)")
    p.add_argument("--out", default=defaults.out, help=f"output folder (default: {defaults.out})")
    p.add_argument("--steps", type=int, default=defaults.steps, help=f"training steps (default: {defaults.steps})")
    p.add_argument("--similarity", choices=["global", "token_wise"], default=defaults.similarity,
                   help="similarity head (default: token_wise; alignment pictures need it)")
    p.add_argument("--train-size", type=int, default=defaults.train_size, help="generated training pairs")
    p.add_argument("--eval-size", type=int, default=defaults.eval_size, help="generated held-out images")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.set_defaults(func=_cmd_demo)
    p = subparsers.add_parser("visualize", help="word-patch alignment (paper Figure 4) of a label on an image, "
                                                "for any token-wise model")
    p.add_argument("--model", required=True, help="model folder or Hub id (a token-wise model)")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--label", required=True, help="Chinese label, e.g. 蜻蜓")
    p.add_argument("--out", help="PNG to write (default: IMAGE-alignment.png beside the image)")
    p.add_argument("--scale", type=float, default=1.0, help="output size factor (default 1: the image's size)")
    p.set_defaults(func=_cmd_visualize)
