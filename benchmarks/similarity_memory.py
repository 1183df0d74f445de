"""Peak memory and time of token-wise similarity + InfoNCE, forward and backward: naive vs tiled.

Each case runs in a fresh subprocess; peak memory = the process's peak RSS (ru_maxrss) minus its
RSS right before the case (inputs already built), so it counts everything torch allocates for
the forward and backward. Also checks loss and gradients of ours against the naive form and
measures the machine's fp32 matmul rate to express our kernel's FLOP rate as a fraction of it.

    python benchmarks/similarity_memory.py            # all cases (about 2-3 minutes on 2 cores)
    python benchmarks/similarity_memory.py --quick    # b = 128 only
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

D, TEXT_TOKENS = 256, 32
NAIVE_LIMIT_BYTES = 2.3e9  # one (b, b, n1, 32) fp32 tensor; autograd keeps several: skip beyond this on a shared 24 GiB box


def make_inputs(batch, image_tokens, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, image_tokens, D, generator=g), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(batch, TEXT_TOKENS, D, generator=g), dim=-1).requires_grad_()
    lengths = torch.randint(8, TEXT_TOKENS + 1, (batch,), generator=g)  # realistic captions: 8-32 real tokens
    text_mask = torch.arange(TEXT_TOKENS)[None] < lengths[:, None]
    image_mask = torch.ones(batch, image_tokens, dtype=torch.bool)
    return image, text, image_mask, text_mask


def naive_similarity(image, text, image_mask, text_mask):
    sim = torch.einsum("ikd,jrd->ijkr", image, text)

    def masked_max_mean(sim, max_mask, mean_mask):
        best = sim.masked_fill(~max_mask[None, :, None, :], float("-inf")).amax(dim=-1)
        best = torch.where(torch.isfinite(best), best, torch.zeros_like(best)) * mean_mask[:, None, :]
        return best.sum(-1) / mean_mask.sum(-1).clamp(min=1)[:, None]

    return masked_max_mean(sim, text_mask, image_mask), masked_max_mean(sim.permute(1, 0, 3, 2), image_mask, text_mask)


def run_case(kind, batch, image_tokens):
    """Runs in the subprocess: prints a JSON line with peak MB, seconds, loss and gradients' checksum."""
    from wukong_hf import contrastive_loss, token_wise_similarity

    image, text, image_mask, text_mask = make_inputs(batch, image_tokens)
    fn = naive_similarity if kind == "naive" else token_wise_similarity
    rss_before = Path("/proc/self/statm").read_text().split()[1]
    rss_before_mb = int(rss_before) * resource.getpagesize() / 2**20
    start = time.perf_counter()
    i2t, t2i = fn(image, text, image_mask, text_mask)
    loss = contrastive_loss(10 * i2t, 10 * t2i)
    loss.backward()
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before_mb
    torch.save({"loss": loss.detach(), "image": image.grad, "text": text.grad}, f"/tmp/similarity_memory_{kind}.pt")
    print(json.dumps({"peak_mb": peak_mb, "seconds": seconds}))


def matmul_gflops(size=2048, repeats=5):
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only local batch 128")
    args = parser.parse_args()
    batches = [128] if args.quick else [128, 256, 512]
    machine = "2-core CPU sandbox, no GPU (shared with other jobs: timings are noisy)"
    rate = matmul_gflops()
    rows = []
    for image_tokens in (50, 257):
        for batch in batches:
            row = {"batch": batch, "image_tokens": image_tokens}
            naive_bytes = batch * batch * image_tokens * TEXT_TOKENS * 4
            for kind in ("naive", "ours"):
                if kind == "naive" and naive_bytes > NAIVE_LIMIT_BYTES:
                    row["naive"] = f"skipped: the 4-D tensor alone is {naive_bytes / 2**30:.1f} GiB"
                    continue
                out = subprocess.run(
                    [sys.executable, __file__, "--case", kind, str(batch), str(image_tokens)],
                    check=True, capture_output=True, text=True,
                ).stdout.strip().splitlines()[-1]
                row[kind] = json.loads(out)
            # forward: one matmul pass; backward: two (gradients of both sides)
            flops = 3 * 2 * batch * batch * image_tokens * TEXT_TOKENS * D
            row["ours"]["gflops"] = flops / row["ours"]["seconds"] / 1e9
            row["ours"]["fraction_of_matmul_rate"] = row["ours"]["gflops"] / rate
            if isinstance(row.get("naive"), dict):
                naive, ours = (torch.load(f"/tmp/similarity_memory_{k}.pt", weights_only=True) for k in ("naive", "ours"))
                row["max_relative_error"] = max(
                    float((ours[k] - naive[k]).abs().max() / naive[k].abs().max()) for k in ("loss", "image", "text")
                )
            rows.append(row)
    print(f"{machine}; fp32 matmul rate {rate:.0f} GFLOP/s; d={D}, {TEXT_TOKENS} text tokens (8-32 real)")
    print(f"{'b':>5} {'n1':>4} | {'naive MB':>9} {'naive s':>8} | {'ours MB':>8} {'ours s':>7} {'GFLOP/s':>8} {'of mm':>6} | {'mem ratio':>9} {'rel err':>8}")
    for row in rows:
        naive, ours = row.get("naive"), row["ours"]
        has_naive = isinstance(naive, dict)
        print(
            f"{row['batch']:>5} {row['image_tokens']:>4} | "
            + (f"{naive['peak_mb']:>9.0f} {naive['seconds']:>8.2f}" if has_naive else f"{'skipped':>18}")
            + f" | {ours['peak_mb']:>8.0f} {ours['seconds']:>7.2f} {ours['gflops']:>8.1f} {ours['fraction_of_matmul_rate']:>6.2f} | "
            + (f"{ours['peak_mb'] / naive['peak_mb']:>9.3f} {row['max_relative_error']:>8.1e}" if has_naive else naive)
        )
    result = {"machine": machine, "matmul_gflops": rate, "dim": D, "text_tokens": TEXT_TOKENS, "rows": rows}
    out = Path(__file__).parent / "results" / "similarity_memory.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--case":
        torch.set_num_threads(torch.get_num_threads())
        run_case(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
