"""`wukong train CONFIG [section.key=value ...]`: parse arguments, call wukong_hf.training.train."""

import os

__all__ = ["register", "run_training_command"]


def run_training_command(args) -> int:
    from . import TrainConfig, train

    config = TrainConfig.from_yaml(args.config, args.overrides)
    result = train(config)
    if int(os.environ.get("RANK", "0")) != 0:  # one summary per run, not one per process
        return 0
    if result.history and result.global_batch:
        import math

        last = result.history[-1]
        print(f"final loss {last['loss']:.3f} after {last['step']} steps (chance, a uniform guess over the "
              f"{result.global_batch} pairs of a step: ln {result.global_batch} = {math.log(result.global_batch):.3f})")
    print(f"final model: {result.final_model_dir}")
    if result.best_model_dir:
        print(f"best model: {result.best_model_dir} (zero-shot top-1 {result.best_accuracy:.2f}%)")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train with the paper's LiT recipe (run under `accelerate launch` for several processes)",
        description="Train a Wukong model from a YAML config (see configs/). Several processes: "
        "accelerate launch train.py CONFIG [overrides].",
    )
    p.add_argument("config", help="YAML training config, e.g. configs/train-tiny-cpu.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=1e-3 loop.max_steps=100")
    p.set_defaults(func=run_training_command)
