"""Training loader throughput: decoded, augmented (the paper's AutoAugment, seeded per pair), processed samples/s on one core.

Shards hold 256x256-short-side JPEGs, as `wukong data download` writes them; output is 224 px batches.
Usage: python benchmarks/data_loader.py [--n 512 --batch-size 64]
Writes benchmarks/results/data_loader.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from wukong_hf import WukongProcessor
from wukong_hf.data.train_loader import build_train_loader


def write_shards(folder: str, n: int, per_shard: int = 128) -> None:
    rng = np.random.default_rng(0)
    for shard in range(0, n, per_shard):
        with wds.TarWriter(os.path.join(folder, f"{shard // per_shard:05d}.tar")) as writer:
            for i in range(shard, min(n, shard + per_shard)):
                buf = io.BytesIO()
                Image.fromarray((rng.random((256, 341, 3)) * 255).astype("uint8")).save(buf, "JPEG", quality=90)
                writer.write({"__key__": f"{i:09d}", "jpg": buf.getvalue(), "txt": f"第{i}张图片：一只猫在草地上"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    processor = WukongProcessor.from_defaults(image_size=224)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_shards(tmp, args.n)
        for augment in (True, False):
            start = time.perf_counter()
            count = sum(len(b["input_ids"]) for b in build_train_loader(tmp, processor, args.batch_size, augment=augment))
            seconds = time.perf_counter() - start
            rows.append({"augment": augment, "samples": count, "seconds": round(seconds, 2), "samples_per_s_per_core": round(count / seconds, 1)})
    print(f"{'augment':>8s} {'samples':>8s} {'seconds':>8s} {'samples/s/core':>15s}")
    for r in rows:
        print(f"{str(r['augment']):>8s} {r['samples']:8d} {r['seconds']:8.2f} {r['samples_per_s_per_core']:15.1f}")
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "data_loader.json"), "w") as fh:
        json.dump({"machine": "2-core CPU sandbox, no GPU (shared with other jobs: timings are noisy)", "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
