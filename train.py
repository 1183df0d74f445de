"""Train a Wukong model with the paper's LiT recipe: a thin entry into wukong_hf.training.

    python train.py CONFIG.yaml [section.key=value ...]

One CPU (the tiny config: 200 steps of 16 pairs, ends near 0.55 x chance; first make its 256 synthetic pairs):
    python -c "from wukong_hf.data.synthetic import SyntheticShapes as S; S().to_dataset('train', 256).save_to_disk('data/tiny-pairs')"
    python train.py configs/train-tiny-cpu.yaml
    accelerate launch --cpu --num_processes 1 train.py configs/train-tiny-cpu.yaml

Two CPU processes (gloo; the weights match one process with the same global batch within 1e-5,
dropout off). `accelerate launch --cpu --num_processes 2` starts only ONE process in
accelerate 1.x; use torchrun, or --multi_gpu on a machine without CUDA (train() then picks gloo):
    torchrun --nproc_per_node 2 train.py configs/train-tiny-cpu.yaml loop.batch_size=8
    accelerate launch --multi_gpu --num_processes 2 train.py configs/train-tiny-cpu.yaml loop.batch_size=8

One GPU (bf16):
    accelerate launch --num_processes 1 --mixed_precision bf16 train.py configs/train-paper-vit-l-14-token-wise.yaml \
        data.dataset=/data/wukong-shards-dataset

Several GPUs on one machine (8 here; loop.batch_size is per GPU, the negative set is
batch_size x accumulation_steps x 8):
    accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 train.py \
        configs/train-paper-vit-l-14-token-wise.yaml data.dataset=/data/wukong
    (WebDataset shards from `wukong data download` instead: data.dataset=null data.shards=/data/wukong-shards
    loop.max_steps=N)

Several nodes (run on every node; 4 nodes x 8 GPUs, node rank 0..3):
    accelerate launch --multi_gpu --num_machines 4 --num_processes 32 --machine_rank $NODE_RANK \
        --main_process_ip $MASTER_ADDR --main_process_port 29500 --mixed_precision bf16 \
        train.py configs/train-paper-vit-l-14-token-wise.yaml data.dataset=/data/wukong

Mixed precision and accumulation come from the launcher (--mixed_precision, an `accelerate config` file,
ACCELERATE_GRADIENT_ACCUMULATION_STEPS) unless the config sets loop.mixed_precision / loop.accumulation_steps;
the run prints which. Resume after a crash: run the same command again; checkpoint.resume=auto (the default)
picks up the latest complete checkpoint in loop.output_dir, and a finished run says so and trains nothing.
The same run is `wukong train CONFIG [overrides]`.
"""

import sys

from wukong_hf.cli import CommandParser, run_command
from wukong_hf.training.commands import run_training_command


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="train.py", description="Train a Wukong model (see the module docstring for launch commands).")
    parser.add_argument("config", help="YAML training config, e.g. configs/train-tiny-cpu.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=1e-3 loop.max_steps=100")
    # The `wukong` command's error handler: bad input ends in one line and status 2 (--debug: traceback).
    return run_command(run_training_command, parser.parse_args(argv), "train.py")


if __name__ == "__main__":
    sys.exit(main())
