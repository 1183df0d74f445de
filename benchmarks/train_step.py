"""Step time and samples/s of train_step on CPU: locked vs unlocked image tower, global vs token-wise
loss, accumulation cost. Prints a table, writes benchmarks/results/train_step.json (or the path given
as the first argument). Under 2 minutes on an idle machine.

One vs two processes: benchmarks/train_processes.py."""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from wukong_hf import WukongModel, WukongProcessor, preset_config
from wukong_hf.losses import ContrastiveLoss
from wukong_hf.training.step import DualEncoderStep, train_step

MACHINE = "2-core CPU sandbox, no GPU"
# An image tower that dominates the cost: ViT width 192, depth 6, patch 8 at 96 px (144 patches).
VISION = {"model_type": "timm_wrapper", "architecture": "vit_base_patch32_clip_quickgelu_224", "do_pooling": False,
          "model_args": {"embed_dim": 192, "depth": 6, "num_heads": 3, "patch_size": 8, "img_size": 96}}


def measure(similarity: str, locked: bool, batch: int, accumulation: int, repeats: int = 3) -> dict:
    torch.manual_seed(0)
    config = preset_config("tiny-global", vision_config=VISION, image_size=96, similarity=similarity)
    model = WukongModel(config).train()
    accelerator = Accelerator(cpu=True)
    step = DualEncoderStep(model, lock_image_tower=locked)
    loss_fn = ContrastiveLoss(model.similarity_rule, layout="lit" if locked else "local")
    processor = WukongProcessor.from_config(config)
    text = processor(text=[f"第{i}张图片" for i in range(batch)])
    micro = [{"pixel_values": torch.randn(batch, 3, 96, 96), **text} for _ in range(accumulation)]
    train_step(step, micro, loss_fn, accelerator, replay_image_tower=locked)  # warm-up
    times = []
    for _ in range(repeats):
        model.zero_grad()
        start = time.perf_counter()
        train_step(step, micro, loss_fn, accelerator, replay_image_tower=locked)
        times.append(time.perf_counter() - start)
    seconds = min(times)
    return {"similarity": similarity, "image_tower": "locked" if locked else "unlocked", "micro_batch": batch,
            "accumulation": accumulation, "step_s": round(seconds, 4),
            "samples_per_s": round(batch * accumulation / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description="Step time of locked vs unlocked, global vs token-wise, and accumulation.")
    parser.add_argument("out", nargs="?", default=str(Path(__file__).parent / "results" / "train_step.json"), help="JSON to write")
    out = Path(parser.parse_args().out)
    torch.set_num_threads(2)
    rows = [measure("global", True, 32, 1), measure("global", False, 32, 1), measure("token_wise", True, 32, 1),
            measure("token_wise", False, 32, 1), measure("global", True, 16, 2), measure("global", False, 16, 2)]
    print(f"machine: {MACHINE}")
    print(f"{'similarity':11s} {'tower':9s} {'b':>3s} {'k':>2s} {'step s':>8s} {'samples/s':>10s}")
    for r in rows:
        print(f"{r['similarity']:11s} {r['image_tower']:9s} {r['micro_batch']:3d} {r['accumulation']:2d} "
              f"{r['step_s']:8.3f} {r['samples_per_s']:10.1f}")
    out.write_text(json.dumps({"machine": MACHINE, "load_average_1min_at_end": round(os.getloadavg()[0], 2),
                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
