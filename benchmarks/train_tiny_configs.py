"""Every training config in configs/ that runs on a CPU, run with its documented command: final loss against
chance (ln of the batch size); and the measurements behind train-tiny-cpu.yaml's choice of image tower and head.

    python benchmarks/train_tiny_configs.py [--seeds 0 1 2] [--skip-choices]

Configs: makes the config's data with the command in docs/training.md, then runs
`python train.py CONFIG loop.seed=S loop.output_dir=TMP` in a subprocess per seed (seed 0 is the config as
shipped) and reads its history.json. Target (issue 15): final loss <= 0.7 x ln(batch size).
Choices: the same data, steps and optimiser with other towers and heads (the earlier config: tiny-global, locked,
[CLS] pooling), and the pairwise cosine of each locked random tower's pooled image features over the 256 images.
Writes benchmarks/results/train_tiny_configs.json. A few minutes on 2 quiet cores.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MACHINE = "2-core CPU sandbox, no GPU"
# config -> the data command docs/training.md gives for it (run in the same working directory as train.py).
CPU_CONFIGS = {
    "configs/train-tiny-cpu.yaml": [sys.executable, "-c", "from wukong_hf.data.synthetic import SyntheticShapes as S; "
                                    "S().to_dataset('train', 256).save_to_disk('data/tiny-pairs')"],
}
# (label, model.preset, lock the image tower, model overrides)
CHOICES = [
    ("tiny-global, locked, [CLS] pooling (the earlier config)", "tiny-global", True, {}),
    ("tiny-global, locked, mean pooling", "tiny-global", True, {"image_pooling": "mean"}),
    ("tiny-global, unlocked, [CLS] pooling", "tiny-global", False, {}),
    ("tiny-token-wise, locked (shipped)", "tiny-token-wise", True, {}),
    ("tiny-token-wise, unlocked", "tiny-token-wise", False, {}),
]


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_config(config: str, seed: int, workdir: Path) -> dict:
    out = workdir / f"run-seed{seed}"
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "train.py"), str(ROOT / config), f"loop.seed={seed}",
                    f"loop.output_dir={out}", "log.progress_bar=false"], cwd=workdir, env=env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    history = json.loads((out / "history.json").read_text(encoding="utf-8"))
    assert (out / "finished.json").is_file(), f"{config} seed {seed} did not finish"
    return {"seed": seed, "steps": history[-1]["step"], "first_loss": round(history[0]["loss"], 4),
            "final_loss": round(history[-1]["loss"], 4), "wall_seconds": round(wall, 1)}


def measure_configs(seeds: list[int]) -> list[dict]:
    import yaml

    rows = []
    for config, data_command in CPU_CONFIGS.items():
        batch_size = yaml.safe_load((ROOT / config).read_text(encoding="utf-8"))["loop"]["batch_size"]
        chance = math.log(batch_size)
        with tempfile.TemporaryDirectory(prefix="wukong-cpu-config-") as tmp:
            workdir = Path(tmp)
            subprocess.run(data_command, cwd=workdir, env=env(), check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            runs = [run_config(config, seed, workdir) for seed in seeds]
        for run in runs:
            run["final_over_chance"] = round(run["final_loss"] / chance, 3)
            run["meets_target"] = run["final_loss"] <= 0.7 * chance
            print(f"{config} seed {run['seed']}: loss {run['first_loss']:.3f} -> {run['final_loss']:.3f} after "
                  f"{run['steps']} steps (chance ln {batch_size} = {chance:.3f}; {run['final_over_chance']:.2f}x), "
                  f"{run['wall_seconds']:.0f} s", flush=True)
        rows.append({"config": config, "batch_size": batch_size, "chance": round(chance, 4),
                     "target": round(0.7 * chance, 4), "runs": runs})
    return rows


def measure_choices() -> list[dict]:
    import torch

    from wukong_hf import WukongModel, WukongProcessor, preset_config
    from wukong_hf.data.synthetic import SyntheticShapes
    from wukong_hf.training import TrainConfig, train

    data = SyntheticShapes().to_dataset("train", 256)
    rows = []
    for label, preset, locked, overrides in CHOICES:
        torch.manual_seed(0)
        config = preset_config(preset, **overrides)
        model, processor = WukongModel(config).eval(), WukongProcessor.from_config(config)
        pixels = processor(images=[image.convert("RGB") for image in data["image"]], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            pooled = torch.nn.functional.normalize(model.encode_image(pixels).embeds, dim=-1)
        cosine = (pooled @ pooled.T)[~torch.eye(len(pooled), dtype=torch.bool)]
        with tempfile.TemporaryDirectory(prefix="wukong-choice-") as tmp:
            run = TrainConfig.from_yaml(ROOT / "configs" / "train-tiny-cpu.yaml", [
                f"model.preset={preset}", f"model.lock_image_tower={str(locked).lower()}", f"loop.output_dir={tmp}",
                "log.report_to=none", "log.progress_bar=false", "checkpoint.every_steps=0",
                *[f"model.overrides.{k}={v}" for k, v in overrides.items()]])
            history = train(run, train_dataset=data).history
        chance = math.log(run.loop.batch_size)
        row = {"choice": label, "preset": preset, "locked": locked, "overrides": overrides,
               "image_embedding_cosine_mean": round(float(cosine.mean()), 4),
               "image_embedding_cosine_min": round(float(cosine.min()), 4),
               "final_loss": round(history[-1]["loss"], 4), "final_over_chance": round(history[-1]["loss"] / chance, 3)}
        rows.append(row)
        print(f"{label}: image-embedding cosine mean {row['image_embedding_cosine_mean']:.4f} (min "
              f"{row['image_embedding_cosine_min']:.4f}), final loss {row['final_loss']:.3f} "
              f"({row['final_over_chance']:.2f}x chance)", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-choices", action="store_true")
    args = parser.parse_args()
    import torch

    result = {"machine": MACHINE, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "load_average_before": round(os.getloadavg()[0], 2), "configs": measure_configs(args.seeds)}
    if not args.skip_choices:
        result["choices"] = measure_choices()
    result["load_average_after"] = round(os.getloadavg()[0], 2)
    target = ROOT / "benchmarks" / "results" / "train_tiny_configs.json"
    target.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
