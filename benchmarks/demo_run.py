"""The full `wukong demo` at its default size, over several seeds: wall time and the numbers the issue targets.

    python benchmarks/demo_run.py [--seeds 0 1 2 3 4 5 6 7 8 9] [--out DIR] [--jobs N]

Runs `wukong demo --seed S` in a subprocess per seed (so import and start-up count), then checks the
targets on each: zero-shot top-1 on held-out colour-shape combinations >= 3x chance, the share of
label-token patch area on the object against the object's area fraction, total under 5 minutes.
Several seeds, because the alignment share depends on which token each background colour's
patches take as their best token ([CLS]/[SEP], or a label token), a choice the training loss leaves
to the initialisation (docs/demo.md), and because one seed's numbers differ between machines (thread
count and CPU vector width change the order of float sums). Writes benchmarks/results/demo_run.json,
whose "reference" block (lowest, highest over the seeds) is what wukong_hf.demo.REFERENCE and
docs/demo.md quote (tests/test_demo.py checks they agree). About a minute per seed on 2 quiet cores.

--jobs N runs N seeds at once: the numbers are the same (each demo keeps its own thread count, and a
seed's result depends on that, not on timing), the wall times are not. Timing ranges in the reference
block come only from quiet runs (one job, load average before the run at most QUIET_LOAD); when this
run has none, they are carried over from the previous results file's quiet runs, and the JSON says so.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MACHINE = "2-core CPU sandbox, no GPU"
QUIET_LOAD = 2.5
TARGET = Path(__file__).parent / "results" / "demo_run.json"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def span(values, digits=1):
    return [round(min(values), digits), round(max(values), digits)]


def quiet_timing(runs: list[dict], previous: dict | None) -> dict:
    """Seconds per training step and total seconds, (lowest, highest), over quiet runs only (see the module doc)."""
    quiet = [r for r in runs if r.get("jobs", 1) == 1 and r["load_average_before"] <= QUIET_LOAD]
    source = "this run"
    if not quiet and previous:
        quiet = [r for r in previous.get("runs", []) if r.get("jobs", 1) == 1
                 and r["load_average_before"] <= QUIET_LOAD]
        source = previous.get("timing", {}).get("from") or f"the previous results file ({previous.get('date', 'undated')})"
    if not quiet:
        return {"from": "no quiet run"}
    return {
        "from": source,
        "runs": len(quiet),
        "train_seconds_per_step": span([r["demo_seconds"]["train"] / r.get("steps", 400) for r in quiet], 3),
        "total_seconds": [int(min(r["demo_seconds"]["total"] for r in quiet)),
                          int(max(r["demo_seconds"]["total"] for r in quiet) + 0.999)],
    }


def reference_block(runs: list[dict], timing: dict) -> dict:
    """(lowest, highest) over the seeds of what the demo prints: the ranges wukong_hf.demo.REFERENCE quotes."""
    return {
        "seeds": f"{min(r['seed'] for r in runs)}-{max(r['seed'] for r in runs)}",
        "zero_shot_top1": span([r["zero_shot_top1"] for r in runs]),
        "held_out_only_top1": span([r["held_out_only_top1"] for r in runs]),
        "alignment_share_on_object": span([100 * r["alignment_share_on_object"] for r in runs]),
        "pipeline_right": span([r["pipeline_right"] for r in runs], 0),
        "train_seconds_per_step": timing.get("train_seconds_per_step"),
        "total_seconds": timing.get("total_seconds"),
    }


def run_seed(seed: int, out: Path, jobs: int = 1, reuse: bool = False) -> dict:
    load_before, wall = os.getloadavg()[0], None
    if not (reuse and (out / "summary.json").is_file()):
        (out / "summary.json").unlink(missing_ok=True)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "wukong_hf.cli", "demo", "--out", str(out), "--seed", str(seed)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - started
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    if summary["settings"]["seed"] != seed:
        raise ValueError(f"{out}/summary.json is for seed {summary['settings']['seed']}, not {seed}")
    z, r, a = summary["zero_shot"], summary["retrieval"], summary["alignment"]
    return {
        "seed": seed,
        "jobs": jobs,
        "steps": summary["settings"]["steps"],
        "load_average_before": round(load_before, 2),
        "wall_seconds": None if wall is None else round(wall, 1),  # None: reused (--reuse), not timed
        "demo_seconds": summary["seconds"],
        "final_loss": round(summary["final_loss"], 4),
        "zero_shot_top1": round(z["top1"], 2),
        "zero_shot_x_chance": round(z["top1"] / z["chance"], 2),
        "zero_shot_top1_single_prompt": round(z["top1_single_prompt"], 2),
        "held_out_only_top1": round(z["held_out_only_top1"], 2),
        "retrieval": {k: round(v, 2) for k, v in r.items()},
        "alignment_share_on_object": round(a["share_on_object"], 4),
        "object_area_fraction": round(a["object_area_fraction"], 4),
        "alignment_x_area": round(a["share_on_object"] / a["object_area_fraction"], 2),
        "colour_character_share_on_object": round(a["share_on_object_by_label_position"]["1"]["share_on_object"], 4),
        "background_patch_tokens": a["background_patch_tokens"],
        "pipeline_right": sum(p["true"] == p["predicted"] for p in summary["pipeline"]),
        "targets": {
            "zero_shot_at_least_3x_chance": z["top1"] >= 3 * z["chance"],
            "alignment_share_above_area": a["share_on_object"] > a["object_area_fraction"],
            "alignment_share_at_least_2x_area": a["share_on_object"] >= 2 * a["object_area_fraction"],
            "under_5_minutes": None if wall is None else wall < 300,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--out", help="folder for the demo outputs, one subfolder per seed (default: temporary)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once (same numbers; wall times not comparable)")
    parser.add_argument("--reuse", action="store_true",
                        help="read OUT/seedS/summary.json where a finished run left one (an interrupted benchmark)")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="wukong-demo-"))
    previous = json.loads(TARGET.read_text(encoding="utf-8")) if TARGET.is_file() else None
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(args.jobs) as pool:  # threads only wait on the demo subprocesses
        futures = [pool.submit(run_seed, seed, root / f"seed{seed}", args.jobs, args.reuse) for seed in args.seeds]
        runs = []
        for future in futures:
            runs.append(future.result())
            run, seed = runs[-1], runs[-1]["seed"]
            print(f"seed {seed}: {run['wall_seconds']} s, zero-shot {run['zero_shot_top1']:.1f}% "
                  f"({run['zero_shot_x_chance']:.1f}x chance), alignment {run['alignment_share_on_object']:.1%} on "
                  f"object vs {run['object_area_fraction']:.1%} area ({run['alignment_x_area']:.1f}x), colour "
                  f"character {run['colour_character_share_on_object']:.0%}, background "
                  f"{run['background_patch_tokens']}", flush=True)
    import datetime

    import torch

    timing = quiet_timing(runs, previous)

    result = {
        "machine": MACHINE,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": datetime.date.today().isoformat(),
        "jobs": args.jobs,
        "reference": reference_block(runs, timing),
        "timing": timing,
        "load_average_after": round(os.getloadavg()[0], 2),
        "seeds": args.seeds,
        "all_seeds": {
            "zero_shot_at_least_3x_chance": sum(r["targets"]["zero_shot_at_least_3x_chance"] for r in runs),
            "alignment_share_at_least_2x_area": sum(r["targets"]["alignment_share_at_least_2x_area"] for r in runs),
            "under_5_minutes": sum(bool(r["targets"]["under_5_minutes"]) for r in runs),
            "max_wall_seconds": max((r["wall_seconds"] or 0) for r in runs),
        },
        "runs": runs,
    }
    TARGET.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    print(json.dumps(result["all_seeds"], indent=1))
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
