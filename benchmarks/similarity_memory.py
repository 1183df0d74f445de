"""Peak memory, time and accuracy of token-wise similarity + InfoNCE, forward and backward: naive vs tiled.

Each case runs in a fresh subprocess; peak memory = the process's peak RSS (ru_maxrss) minus its
RSS right before the first repeat (inputs already built), so it counts everything torch
allocates for the forward and backward. Time is the median of a few repeats (the machine is
shared). Accuracy: ||ours - naive|| / ||naive|| per tensor (loss, image gradient, text gradient),
and both against a float64 reference (ours in float64, itself checked against the naive form in
float64 where that fits). Also measures the machine's fp32 matmul rate, to express our kernel's
FLOP rate as a fraction of it.

    python benchmarks/similarity_memory.py            # all cases (about 10 minutes on 2 quiet cores)
    python benchmarks/similarity_memory.py --quick    # b = 128 only
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

D, TEXT_TOKENS = 256, 32
MACHINE = "2-core CPU sandbox, no GPU"
NAIVE_LIMIT_BYTES = 2.3e9  # one (b, b, n1, 32) fp32 tensor; autograd keeps several: skip beyond this on a 24 GiB box
NAIVE_REPEAT_LIMIT_BYTES = 1.1e9  # above this the naive form runs once (half a minute or more a run)
NAIVE_FP64_LIMIT_BYTES = 1.2e9  # check the float64 reference against the naive form in float64 up to this 4-D size


def make_inputs(batch, image_tokens, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, image_tokens, D, generator=g), dim=-1).to(dtype).requires_grad_()
    text = F.normalize(torch.randn(batch, TEXT_TOKENS, D, generator=g), dim=-1).to(dtype).requires_grad_()
    lengths = torch.randint(8, TEXT_TOKENS + 1, (batch,), generator=g)  # realistic captions: 8-32 real tokens
    text_mask = torch.arange(TEXT_TOKENS)[None] < lengths[:, None]
    image_mask = torch.ones(batch, image_tokens, dtype=torch.bool)
    return image, text, image_mask, text_mask


def naive_similarity(image, text, image_mask, text_mask):
    """The textbook form: materialise (I, T, n1, n2) and let autograd differentiate amax."""
    sim = torch.einsum("ikd,jrd->ijkr", image, text)

    def masked_max_mean(sim, max_mask, mean_mask):
        best = sim.masked_fill(~max_mask[None, :, None, :], float("-inf")).amax(dim=-1)
        best = torch.where(torch.isfinite(best), best, torch.zeros_like(best)) * mean_mask[:, None, :]
        return best.sum(-1) / mean_mask.sum(-1).clamp(min=1)[:, None]

    return masked_max_mean(sim, text_mask, image_mask), masked_max_mean(sim.permute(1, 0, 3, 2), image_mask, text_mask)


def loss_and_grads(kind, batch, image_tokens, dtype=torch.float32, repeats=1, on_ready=None):
    """Runs forward + backward `repeats` times; returns (seconds per repeat, {loss, image, text})."""
    from wukong_hf import contrastive_loss, token_wise_similarity

    image, text, image_mask, text_mask = make_inputs(batch, image_tokens, dtype=dtype)
    fn = naive_similarity if kind == "naive" else token_wise_similarity
    if on_ready is not None:
        on_ready()  # imports done and inputs built: what follows is the case's own memory
    labels = torch.arange(batch)
    seconds = []
    for _ in range(repeats):
        image.grad = text.grad = None
        start = time.perf_counter()
        i2t, t2i = fn(image, text, image_mask, text_mask)
        if dtype == torch.float32:
            loss = contrastive_loss(10 * i2t, 10 * t2i)
        else:  # contrastive_loss computes in float32; keep the reference in float64
            loss = 0.5 * (F.cross_entropy(10 * i2t, labels) + F.cross_entropy(10 * t2i, labels))
        loss.backward()
        seconds.append(time.perf_counter() - start)
        del i2t, t2i
    return seconds, {"loss": loss.detach(), "image": image.grad, "text": text.grad}


def run_case(kind, batch, image_tokens, dtype_name, repeats):
    """Runs in the subprocess: prints a JSON line with peak MB and seconds, saves loss and gradients."""
    rss_before = {}

    def on_ready():
        rss_before["mb"] = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20

    seconds, out = loss_and_grads(kind, batch, image_tokens, getattr(torch, dtype_name), repeats, on_ready)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before["mb"]
    torch.save(out, f"/tmp/similarity_memory_{kind}_{dtype_name}.pt")
    print(json.dumps({"peak_mb": peak_mb, "seconds": statistics.median(seconds), "all_seconds": seconds}))


def subprocess_case(kind, batch, image_tokens, dtype_name="float32", repeats=1):
    out = subprocess.run(
        [sys.executable, __file__, "--case", kind, str(batch), str(image_tokens), dtype_name, str(repeats)],
        check=True, capture_output=True, text=True,
    ).stdout.strip().splitlines()[-1]
    return json.loads(out), torch.load(f"/tmp/similarity_memory_{kind}_{dtype_name}.pt", weights_only=True)


def normwise_errors(got, want):
    """||got - want|| / ||want|| for the loss and each gradient, in float64."""
    return {k: float((got[k].double() - want[k].double()).norm() / want[k].double().norm()) for k in ("loss", "image", "text")}


@torch.no_grad()
def count_selection_differences(batch, image_tokens, step=8):
    """How often the max's winner is ambiguous in fp32, for both directions over all pairs.

    exact_fp32_ties: maxima whose top fp32 value occurs twice (the naive form's amax splits the
    gradient there; torch.max and our kernel give it to one token).
    fp32_vs_float64_winner: maxima whose winning token differs between fp32 and float64 scores
    (a near-tie closer than fp32 rounding of a dot product; the gradient jumps there).
    """
    image, text, image_mask, text_mask = make_inputs(batch, image_tokens, dtype=torch.float64)
    counts = {"exact_fp32_ties": 0, "fp32_vs_float64_winner": 0}
    text_flat = text.reshape(-1, D)
    for i0 in range(0, batch, step):
        x = image[i0 : i0 + step].reshape(-1, D)
        wins = []
        for dtype in (torch.float32, torch.float64):
            scores = (x.to(dtype) @ text_flat.to(dtype).t()).view(-1, image_tokens, batch, TEXT_TOKENS)
            t2i_best, t2i_arg = scores.max(dim=1)  # over image tokens (all count here)
            scores.masked_fill_(~text_mask[None, None], float("-inf"))
            i2t_best, i2t_arg = scores.max(dim=3)  # over the text's counted tokens
            wins.append((t2i_arg, i2t_arg))
            if dtype == torch.float32:
                counts["exact_fp32_ties"] += int((((scores == i2t_best[..., None]).sum(3) > 1)).sum())
                scores = (x.to(dtype) @ text_flat.to(dtype).t()).view(-1, image_tokens, batch, TEXT_TOKENS)
                counts["exact_fp32_ties"] += int((((scores == t2i_best[:, None]).sum(1) > 1) & text_mask[None]).sum())
            del scores
        counts["fp32_vs_float64_winner"] += int(((wins[0][0] != wins[1][0]) & text_mask[None]).sum())
        counts["fp32_vs_float64_winner"] += int((wins[0][1] != wins[1][1]).sum())
    return counts


def matmul_gflops(size=2048, repeats=5, trials=3):
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    rates = []
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        rates.append(2 * size**3 * repeats / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only local batch 128")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per case (median reported)")
    args = parser.parse_args()
    batches = [128] if args.quick else [128, 256, 512]
    rate = matmul_gflops()
    rows = []
    for image_tokens in (50, 257):
        for batch in batches:
            row = {"batch": batch, "image_tokens": image_tokens}
            naive_bytes = batch * batch * image_tokens * TEXT_TOKENS * 4
            row["ours"], ours = subprocess_case("ours", batch, image_tokens, repeats=args.repeats)
            # forward: one matmul pass over every (image token, text token) pair; backward: two. Padding included.
            flops = 3 * 2 * batch * batch * image_tokens * TEXT_TOKENS * D
            row["ours"]["gflops"] = flops / row["ours"]["seconds"] / 1e9
            row["ours"]["fraction_of_matmul_rate"] = row["ours"]["gflops"] / rate
            _, reference = subprocess_case("ours", batch, image_tokens, "float64")
            row["ours_vs_float64"] = normwise_errors(ours, reference)
            row["selection"] = count_selection_differences(batch, image_tokens)
            if naive_bytes > NAIVE_LIMIT_BYTES:
                row["naive"] = f"skipped: the (b, b, n1, n2) fp32 tensor alone is {naive_bytes / 2**30:.1f} GiB, autograd keeps several"
            else:
                repeats = args.repeats if naive_bytes <= NAIVE_REPEAT_LIMIT_BYTES else 1
                row["naive"], naive = subprocess_case("naive", batch, image_tokens, repeats=repeats)
                row["ours_vs_naive"] = normwise_errors(ours, naive)
                row["naive_vs_float64"] = normwise_errors(naive, reference)
                row["memory_ratio"] = row["ours"]["peak_mb"] / row["naive"]["peak_mb"]
                row["speedup"] = row["naive"]["seconds"] / row["ours"]["seconds"]
            if 2 * naive_bytes <= NAIVE_FP64_LIMIT_BYTES:
                _, naive_reference = subprocess_case("naive", batch, image_tokens, "float64")
                row["float64_reference_vs_naive_float64"] = normwise_errors(reference, naive_reference)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{MACHINE}; fp32 matmul rate {rate:.0f} GFLOP/s; d={D}, {TEXT_TOKENS} text tokens (8-32 real)")
    print(f"{'b':>5} {'n1':>4} | {'naive MB':>9} {'naive s':>8} | {'ours MB':>8} {'ours s':>7} {'of mm':>6} | "
          f"{'mem':>6} {'speed':>6} | {'err vs naive':>12} {'err vs f64':>10}")
    for row in rows:
        naive, ours = row.get("naive"), row["ours"]
        has_naive = isinstance(naive, dict)
        f64 = max(row["ours_vs_float64"].values())
        print(
            f"{row['batch']:>5} {row['image_tokens']:>4} | "
            + (f"{naive['peak_mb']:>9.0f} {naive['seconds']:>8.2f}" if has_naive else f"{'skipped':>18}")
            + f" | {ours['peak_mb']:>8.0f} {ours['seconds']:>7.2f} {ours['fraction_of_matmul_rate']:>6.2f} | "
            + (f"{row['memory_ratio']:>6.3f} {row['speedup']:>5.1f}x | {max(row['ours_vs_naive'].values()):>12.1e}"
               if has_naive else f"{'':>6} {'':>6} | {'':>12}")
            + f" {f64:>10.1e}"
        )
    result = {
        "machine": MACHINE,
        "gpu": "not measured: no GPU was lent to this session",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "matmul_gflops": rate,
        "dim": D,
        "text_tokens": TEXT_TOKENS,
        "text_lengths": "uniform 8-32 real tokens, padding at the end",
        "timing": f"median of {args.repeats} forward+backward repeats in one fresh process (naive above "
                  f"{NAIVE_REPEAT_LIMIT_BYTES / 1e9:.1f} GB of 4-D tensor: 1 run); peak_mb = peak RSS minus RSS before",
        "flops": "3 * 2 * b^2 * n1 * n2 * d: forward one matmul pass over all token pairs, backward two; padding counted",
        "error_metric": "normwise ||x - ref|| / ||ref|| per tensor (loss, image gradient, text gradient); "
                        "float64 reference = ours in float64, checked against the naive form in float64 where it fits",
        "rows": rows,
    }
    out = Path(__file__).parent / "results" / "similarity_memory.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--case":
        run_case(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6]))
    else:
        main()
