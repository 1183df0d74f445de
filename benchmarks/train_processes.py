"""One process versus two processes on the same global batch: full optimiser steps (forward, global-batch
loss, backward, DDP all-reduce, LAMB) on CPU with gloo, locked and unlocked image tower.

Rows: one process with 2 threads and with 1 thread, two processes with 1 thread each (2 cores). Writes
benchmarks/results/train_processes.json. About 2 minutes:

    python benchmarks/train_processes.py
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MACHINE = "2-core CPU sandbox, no GPU"
GLOBAL_BATCH, WARMUP, REPEATS = 32, 1, 5
HERE = Path(__file__).resolve().parent


def worker(locked: bool, threads: int, out_file: str) -> None:
    """Run under torchrun: time REPEATS steps of the global batch split over the launched processes."""
    from accelerate import Accelerator

    sys.path.insert(0, str(HERE))
    from train_step import VISION

    from wukong_hf import WukongModel, WukongProcessor, preset_config
    from wukong_hf.losses import ContrastiveLoss
    from wukong_hf.training.config import OptimSection
    from wukong_hf.training.recipe import build_optimizer
    from wukong_hf.training.step import DualEncoderStep, train_step

    accelerator = Accelerator(cpu=True)
    world = accelerator.num_processes
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = preset_config("tiny-global", vision_config=VISION, image_size=96)
    model = WukongModel(config).train()
    step = DualEncoderStep(model, lock_image_tower=locked)
    optimizer = build_optimizer(model, OptimSection())
    step, optimizer = accelerator.prepare(step, optimizer)
    loss_fn = ContrastiveLoss(model.similarity_rule, layout="lit" if locked else "local")
    batch = GLOBAL_BATCH // world
    text = WukongProcessor.from_config(config)(text=[f"第{i}张图片" for i in range(batch)])
    micro = [{"pixel_values": torch.randn(batch, 3, 96, 96), **text}]
    times = []
    for i in range(WARMUP + REPEATS):
        accelerator.wait_for_everyone()
        start = time.perf_counter()
        train_step(step, micro, loss_fn, accelerator, replay_image_tower=locked)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    slowest = accelerator.gather(torch.tensor([min(times)])).max().item()  # a step ends when the last process ends
    if accelerator.is_main_process:
        Path(out_file).write_text(json.dumps({"step_s": slowest}))
    accelerator.end_training()


def measure(processes: int, threads: int, locked: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out_file = str(Path(tmp) / "result.json")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
               str(29500 + processes + 10 * locked), __file__, "--worker", str(int(locked)), str(threads), out_file]
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        seconds = json.loads(Path(out_file).read_text())["step_s"]
    return {"processes": processes, "threads_per_process": threads, "image_tower": "locked" if locked else "unlocked",
            "global_batch": GLOBAL_BATCH, "step_s": round(seconds, 4), "samples_per_s": round(GLOBAL_BATCH / seconds, 1)}


def main() -> None:
    load = os.getloadavg()[0]
    # Two interleaved rounds, best of each: other jobs on the shared cores come and go.
    rounds = [[measure(p, t, locked) for locked in (True, False) for p, t in ((1, 2), (1, 1), (2, 1))] for _ in range(2)]
    rows = [min(pair, key=lambda r: r["step_s"]) for pair in zip(*rounds)]
    print(f"machine: {MACHINE}")
    print(f"{'tower':9s} {'procs':>5s} {'threads':>7s} {'B':>3s} {'step s':>8s} {'samples/s':>10s}")
    for r in rows:
        print(f"{r['image_tower']:9s} {r['processes']:5d} {r['threads_per_process']:7d} {r['global_batch']:3d} "
              f"{r['step_s']:8.3f} {r['samples_per_s']:10.1f}")
    out = HERE / "results" / "train_processes.json"
    out.write_text(json.dumps({"machine": MACHINE, "load_average_1min_at_start": round(load, 2),
                               "model": "tiny-global text tower + ViT w192 d6 p8 at 96 px", "rows": rows}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4])
    else:
        main()
