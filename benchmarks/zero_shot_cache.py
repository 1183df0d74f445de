"""Zero-shot rerun speed-up from the prompt feature cache: `wukong eval zero-shot` twice, new images.

Run 1 encodes 200 images and 1,000 + 80,000 prompts (`--classnames imagenet1k --templates
imagenet1k`: the bare class names, then 80 templates x 1,000 classes) and fills the cache; run 2
classifies 200 other images against the same classes and templates, reads every prompt feature
from the cache and encodes no text. Each run is the whole `wukong eval zero-shot` process (start,
imports, model load, fingerprint, images, prompts, scoring, report), timed from outside, as a user
waits for it. With --with-uncached a third run repeats run 2's images with --no-text-cache.

Model: the paper's ViT-B/32 + 12-layer BERT (width 768) global preset, random weights saved to a
folder first (no download); global scoring with the embedding ensemble (the paper's choice for
global models), so scoring is cheap and the text tower is what the cache saves.

    python benchmarks/zero_shot_cache.py                # about 35 minutes on 2 heavily shared cores
    python benchmarks/zero_shot_cache.py --tiny --out /tmp/x.json   # seconds (the tests)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

MACHINE = "2-core CPU sandbox, no GPU"


def write_images(folder: Path, n: int, seed: int, size: int = 256, classes: int = 1000) -> Path:
    """n random-colour JPEGs in a flat folder plus 'FILENAME LABEL' lines (labels below `classes`)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        low = rng.random((4, 4, 3)) * 255
        Image.fromarray(low.astype("uint8")).resize((size, size), Image.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)
        lines.append(f"{i:05d}.jpg {int(rng.integers(classes))}")
    labels = folder.parent / f"{folder.name}-labels.txt"
    labels.write_text("\n".join(lines) + "\n")
    return labels


def run(cmd: list[str], env: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    output = Path(cmd[cmd.index("--output") + 1])
    return seconds, json.loads((output / "results.json").read_text(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "zero_shot_cache.json"))
    parser.add_argument("--tiny", action="store_true", help="tiny preset, 8 images (the tests): checks the script")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--preset", default="paper-vit-b-32-global")
    parser.add_argument("--with-uncached", action="store_true", help="also rerun the new images with --no-text-cache")
    args = parser.parse_args()
    if args.tiny:
        args.images, args.preset = 8, "tiny-global"
    import torch

    from wukong_hf import WukongModel, WukongProcessor, preset_config

    work = Path(tempfile.mkdtemp(prefix="wukong-zs-cache-"))
    torch.manual_seed(0)
    config = preset_config(args.preset)
    WukongModel(config).save_pretrained(work / "model")
    WukongProcessor.from_config(config).save_pretrained(work / "model")
    size = config.image_size
    classnames, templates, num_classes, num_templates = "imagenet1k", "imagenet1k", 1000, 80
    if args.tiny:  # 10 classes x 3 templates: the same commands in seconds
        from wukong_hf.evaluation.prompts import load_classnames

        num_classes, num_templates = 10, 3
        classnames, templates = str(work / "classes.txt"), str(work / "templates.txt")
        Path(classnames).write_text("\n".join(load_classnames("imagenet1k")[:10]) + "\n", encoding="utf-8")
        Path(templates).write_text("{c}的照片\n一张{c}的图片\n{c}\n", encoding="utf-8")
    first_labels = write_images(work / "images-a", args.images, 1, max(size, 64), num_classes)
    second_labels = write_images(work / "images-b", args.images, 2, max(size, 64), num_classes)
    env = dict(os.environ, OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    base = [sys.executable, "-m", "wukong_hf.cli", "eval", "zero-shot", "--model", str(work / "model"),
            "--classnames", classnames, "--templates", templates]
    cache = work / "text-cache"
    load_start = os.getloadavg()
    runs = {}
    plan = [("first run (fills the cache)", "images-a", first_labels, ["--text-cache", str(cache)]),
            ("rerun, new images (cache)", "images-b", second_labels, ["--text-cache", str(cache)])]
    if args.with_uncached or args.tiny:
        plan.append(("rerun, new images, --no-text-cache", "images-b", second_labels, ["--no-text-cache"]))
    for name, folder, labels, extra in plan:
        cmd = base + ["--imagenet-val", str(work / folder), "--imagenet-labels", str(labels),
                      "--output", str(work / f"out-{len(runs)}")] + extra
        seconds, result = run(cmd, env)
        runs[name] = {"wall_s": round(seconds, 1), "reported_s": result["seconds"], "text_cache": result.get("text_cache"),
                      "top1_ensemble": result["ensemble"]["top1"], "load_average_1min": round(os.getloadavg()[0], 2)}
        print(f"{name:40s} {seconds:8.1f} s  (load {runs[name]['load_average_1min']})", file=sys.stderr)
    first, second = runs["first run (fills the cache)"]["wall_s"], runs["rerun, new images (cache)"]["wall_s"]
    uncached = runs.get("rerun, new images, --no-text-cache", {}).get("wall_s")
    cache_bytes = sum(p.stat().st_size for p in cache.glob("*.safetensors"))
    result = {
        "machine": MACHINE, "preset": args.preset, "images_per_run": args.images, "classes": num_classes,
        "templates": num_templates, "prompts_encoded_first_run": num_classes * (1 + num_templates), "runs": runs,
        "speedup_rerun_vs_first": round(first / second, 2), "speedup_rerun_vs_uncached_rerun": round(uncached / second, 2) if uncached else None,
        "cache_files_mb": round(cache_bytes / 2**20, 1), "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
