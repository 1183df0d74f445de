"""Token-wise retrieval scoring at evaluation scale: exact streaming scoring vs global shortlist + re-rank.

1,000 images x 5,000 texts (5 captions each), 50 image tokens, 32 text tokens with padding, d=256,
synthetic features with a planted match per pair. Each mode runs in its own process so its peak
memory (max RSS of the whole process: Python, torch, the cached features and the scoring) is its own.

    python benchmarks/eval_retrieval_scale.py            # full size, about 1-2 minutes on 2 cores
    python benchmarks/eval_retrieval_scale.py --images 200  # quick check
Writes benchmarks/results/eval_retrieval_scale.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from wukong_hf import SimilarityRule, WukongImageFeatures, WukongTextFeatures
from wukong_hf.evaluation import retrieval_ranks, shortlist_ranks
from wukong_hf.evaluation.retrieval import retrieval_metrics_from_ranks

CAPTIONS_PER_IMAGE = 5


def synthetic_features(num_images: int, image_tokens: int, text_tokens: int, dim: int, seed: int = 0):
    """Image tokens are random; each caption copies some of its image's tokens plus noise, then pads."""
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(num_images, image_tokens, dim, generator=g), dim=-1)
    num_texts = num_images * CAPTIONS_PER_IMAGE
    owner = torch.arange(num_texts) // CAPTIONS_PER_IMAGE
    lengths = torch.randint(8, text_tokens + 1, (num_texts,), generator=g)
    text_mask = torch.arange(text_tokens)[None] < lengths[:, None]
    texts = torch.empty(num_texts, text_tokens, dim)
    for start in range(0, num_texts, 500):  # in chunks, so building the set does not set the peak memory
        rows = slice(start, start + 500)
        picks = torch.randint(0, image_tokens, (len(owner[rows]), text_tokens), generator=g)
        # noise of norm ~4 per token against a unit signal: a hard but learnable match
        noisy = images[owner[rows, None], picks] + 4.0 * torch.randn(len(owner[rows]), text_tokens, dim, generator=g) / dim**0.5
        texts[rows] = F.normalize(noisy, dim=-1) * text_mask[rows, :, None]
    image_bank = WukongImageFeatures(F.normalize(images.mean(1), dim=-1), images, torch.ones(num_images, image_tokens, dtype=torch.bool))
    text_global = F.normalize(texts.sum(1), dim=-1)
    text_bank = WukongTextFeatures(text_global, texts, text_mask)
    return image_bank, text_bank, [[int(i)] for i in owner]


def run_mode(args) -> dict:
    torch.set_num_threads(args.threads)
    images, texts, text_images = synthetic_features(args.images, args.image_tokens, args.text_tokens, args.dim)
    feature_bytes = sum(t.numel() * t.element_size() for bank in (images, texts) for t in (bank.embeds, bank.token_embeds, bank.token_mask))
    start = time.perf_counter()
    if args.mode == "exact":
        ranks = retrieval_ranks(images, texts, text_images, SimilarityRule("token_wise"), image_block_size=args.block, progress=False)
    else:
        ranks = shortlist_ranks(images, texts, text_images, SimilarityRule("token_wise"), shortlist=args.shortlist,
                                progress=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "mode": args.mode,
        "seconds": round(seconds, 2),
        "features_mib": round(feature_bytes / 2**20, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        "metrics": retrieval_metrics_from_ranks(*ranks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--image-tokens", type=int, default=50)
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--block", type=int, default=128, help="images per scoring block (exact mode)")
    parser.add_argument("--shortlist", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=("exact", "shortlist"), help="internal: run one mode and print JSON")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    rows = []
    for mode in ("exact", "shortlist"):
        cmd = [sys.executable, __file__, "--mode", mode] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "mode"
        ]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]))
    exact = rows[0]["metrics"]
    for row in rows:
        row["diff_vs_exact"] = {k: round(v - exact[k], 2) for k, v in row["metrics"].items()}
    machine = f"2-core CPU sandbox, no GPU ({platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads; CPU shared with other jobs)"
    print(f"{args.images} images x {args.images * CAPTIONS_PER_IMAGE} texts, {args.image_tokens}/{args.text_tokens} tokens, d={args.dim}; {machine}")
    print(f"{'mode':<22}{'seconds':>9}{'peak RSS MiB':>14}{'features MiB':>14}{'i2t R@1':>9}{'t2i R@1':>9}{'MR':>8}{'MR vs exact':>13}")
    for row in rows:
        label = row["mode"] if row["mode"] == "exact" else f"shortlist {args.shortlist} + rerank"
        m = row["metrics"]
        print(f"{label:<22}{row['seconds']:>9.2f}{row['peak_rss_mib']:>14.1f}{row['features_mib']:>14.1f}{m['i2t_R@1']:>9.2f}{m['t2i_R@1']:>9.2f}{m['MR']:>8.2f}{row['diff_vs_exact']['MR']:>13.2f}")
    out = Path(__file__).parent / "results" / "eval_retrieval_scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "settings": {k: v for k, v in vars(args).items() if k != "mode"}, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
