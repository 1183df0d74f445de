"""The prepared GPU check: one command for one H100/H200-class GPU, sized to finish in about 8 minutes.

Not yet run on a GPU: the sizes come from FLOP counts, and --budget-s stops starting sections once
the time is spent.

1. Training step: ViT-L/14 LiT token-wise (image tower locked, token-wise InfoNCE through
   DualEncoderStep/train_step) at batch 256 under bf16 autocast, vs transformers'
   ChineseCLIPModel at the same size (ViT-L/14 + 12-layer BERT width 768, vision frozen, its own
   global CLIP loss, bf16 autocast): step time, samples/s, peak memory.
2. Token-wise loss at a global batch of 16k: our tiled token_wise_similarity + InfoNCE, forward
   and backward (bf16 features, fp32 accumulation), vs the naive form that materialises
   (I, T, n1, n2): time and peak memory, or OOM. The naive form is also run at the largest batch
   it fits, for a like-for-like time.
3. Token-wise retrieval, 5k images x 25k texts (ViT-L/14 token count, 32 text tokens), exact
   ranks through retrieval_ranks: time and peak memory.

Each section checks the time left against --budget-s and records "skipped: time budget" rather
than overrunning. Writes benchmarks/results/gpu_check.json (or --out).

    python benchmarks/gpu_check.py                       # on a GPU machine
    python benchmarks/gpu_check.py --tiny --out /tmp/g.json   # CPU, tiny sizes (the tests: keeps it from rotting)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

D = 256
TEXT_TOKENS = 32


class Clock:
    def __init__(self, budget_s: float):
        self.start, self.budget = time.perf_counter(), budget_s

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def timed(fn, device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


# ----- 1. training step ---------------------------------------------------------------------------
def ours_step(tiny: bool, batch: int, device, repeats: int) -> dict:
    from accelerate import Accelerator

    from wukong_hf import WukongModel, preset_config
    from wukong_hf.losses import ContrastiveLoss
    from wukong_hf.training.step import DualEncoderStep, train_step

    config = preset_config("tiny-token-wise" if tiny else "paper-vit-l-14-token-wise")
    model = WukongModel(config).to(device).train()
    accelerator = Accelerator(cpu=device.type != "cuda", mixed_precision="bf16")
    step = DualEncoderStep(model, lock_image_tower=True)
    loss_fn = ContrastiveLoss(model.similarity_rule, layout="lit")
    size = config.image_size
    micro = [{"pixel_values": torch.randn(batch, 3, size, size, device=device),
              "input_ids": torch.randint(1000, 20000, (batch, TEXT_TOKENS), device=device),
              "attention_mask": torch.ones(batch, TEXT_TOKENS, dtype=torch.long, device=device)}]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def one():
        optimizer.zero_grad(set_to_none=True)
        with accelerator.autocast():
            train_step(step, micro, loss_fn, accelerator, replay_image_tower=True)
        optimizer.step()

    one()  # warm-up
    reset_peak(device)
    times = timed(one, device, repeats)
    return {"model": f"wukong {'tiny-token-wise' if tiny else 'paper-vit-l-14-token-wise'} (LiT, token-wise loss)",
            "step_s": round(statistics.median(times), 4), "samples_per_s": round(batch / statistics.median(times), 1),
            "peak_gib": peak_gib(device)}


def peer_step(tiny: bool, batch: int, device, repeats: int) -> dict:
    from transformers import ChineseCLIPConfig, ChineseCLIPModel

    if tiny:
        vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "patch_size": 8, "image_size": 32}
        text = {"vocab_size": 21128, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                "intermediate_size": 64}
    else:
        vision = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                  "patch_size": 14, "image_size": 224}
        text = {"vocab_size": 21128, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                "intermediate_size": 3072}
    model = ChineseCLIPModel(ChineseCLIPConfig(text_config=text, vision_config=vision, projection_dim=D)).to(device).train()
    for param in model.vision_model.parameters():  # LiT: the image tower is locked, as ours
        param.requires_grad_(False)
    size = vision["image_size"]
    pixels = torch.randn(batch, 3, size, size, device=device)
    ids = torch.randint(1000, 20000, (batch, TEXT_TOKENS), device=device)
    mask = torch.ones(batch, TEXT_TOKENS, dtype=torch.long, device=device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def one():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True).loss
        loss.backward()
        optimizer.step()

    one()
    reset_peak(device)
    times = timed(one, device, repeats)
    return {"model": "transformers ChineseCLIPModel, same size (vision frozen, global CLIP loss)",
            "step_s": round(statistics.median(times), 4), "samples_per_s": round(batch / statistics.median(times), 1),
            "peak_gib": peak_gib(device)}


# ----- 2. token-wise loss at a large global batch -------------------------------------------------
def features(batch: int, image_tokens: int, device, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)  # made on the device: 16k x 257 x 256 is 4 GiB
    image = F.normalize(torch.randn(batch, image_tokens, D, generator=g, device=device), dim=-1).to(dtype).requires_grad_()
    text = F.normalize(torch.randn(batch, TEXT_TOKENS, D, generator=g, device=device), dim=-1).to(dtype).requires_grad_()
    lengths = torch.randint(8, TEXT_TOKENS + 1, (batch,), generator=g, device=device)
    text_mask = torch.arange(TEXT_TOKENS, device=device)[None] < lengths[:, None]
    image_mask = torch.ones(batch, image_tokens, dtype=torch.bool, device=device)
    return image, text, image_mask, text_mask


def naive_similarity(image, text, image_mask, text_mask):
    """The textbook form: materialise (I, T, n1, n2), masked amax, mean."""
    sim = torch.einsum("ikd,jrd->ijkr", image.float(), text.float())

    def masked_max_mean(sim, max_mask, mean_mask):
        best = sim.masked_fill(~max_mask[None, :, None, :], float("-inf")).amax(dim=-1)
        best = torch.where(torch.isfinite(best), best, torch.zeros_like(best)) * mean_mask[:, None, :]
        return best.sum(-1) / mean_mask.sum(-1).clamp(min=1)[:, None]

    return masked_max_mean(sim, text_mask, image_mask), masked_max_mean(sim.permute(1, 0, 3, 2), image_mask, text_mask)


def loss_case(kind: str, batch: int, image_tokens: int, device) -> dict:
    from wukong_hf import contrastive_loss, token_wise_similarity

    fn = naive_similarity if kind == "naive" else token_wise_similarity
    try:
        image, text, image_mask, text_mask = features(batch, image_tokens, device)
        reset_peak(device)

        def one():
            image.grad = text.grad = None
            i2t, t2i = fn(image, text, image_mask, text_mask)
            contrastive_loss(10 * i2t, 10 * t2i).backward()

        seconds = timed(one, device, 1)[0]
        return {"form": kind, "batch": batch, "seconds": round(seconds, 3), "peak_gib": peak_gib(device)}
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not is_oom(err):
            raise
        return {"form": kind, "batch": batch, "result": "OOM", "peak_gib": peak_gib(device)}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ----- 3. token-wise retrieval ----------------------------------------------------------------------
def retrieval_case(images: int, texts: int, image_tokens: int, device) -> dict:
    from wukong_hf import SimilarityRule, WukongImageFeatures, WukongTextFeatures
    from wukong_hf.evaluation.retrieval import retrieval_ranks

    with torch.no_grad():
        image, text, image_mask, text_mask = features(max(images, texts), image_tokens, device, torch.float32)
    image_features = WukongImageFeatures(embeds=image[:images, 0].detach(), token_embeds=image[:images].detach(),
                                         token_mask=image_mask[:images])
    text_features = WukongTextFeatures(embeds=text[:texts, 0].detach(), token_embeds=text[:texts].detach(),
                                       token_mask=text_mask[:texts])
    text_images = [[j % images] for j in range(texts)]  # five captions per image
    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        retrieval_ranks(image_features, text_features, text_images, SimilarityRule("token_wise"), progress=False)
    sync(device)
    return {"images": images, "texts": texts, "image_tokens": image_tokens, "seconds": round(time.perf_counter() - start, 2),
            "peak_gib": peak_gib(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on whatever device there is (CPU in the tests)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop starting new sections after this")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu_check.json"))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clock = Clock(args.budget_s)
    if args.tiny:
        step_batch, loss_batches, naive_batches, retrieval, image_tokens, repeats = 8, [64], [64], (20, 100), 17, 2
    else:
        step_batch, loss_batches, naive_batches, retrieval, image_tokens, repeats = 256, [4096, 16384], [512, 16384], (5000, 25000), 257, 5
    result: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                    "torch": torch.__version__, "tiny": args.tiny, "budget_s": args.budget_s, "sections": {}}
    sections = result["sections"]

    def run(name: str, fn, min_left: float):
        if clock.left() < min_left:
            sections[name] = "skipped: time budget"
            return
        started = time.perf_counter()
        sections[name] = fn()
        print(f"{name}: {sections[name]} ({time.perf_counter() - started:.1f} s)", flush=True)

    run("train_step_ours", lambda: ours_step(args.tiny, step_batch, device, repeats), 60)
    run("train_step_chinese_clip", lambda: peer_step(args.tiny, step_batch, device, repeats), 60)
    for batch in loss_batches:
        run(f"token_wise_loss_tiled_b{batch}", lambda b=batch: loss_case("tiled", b, image_tokens, device), 60)
    for batch in naive_batches:
        run(f"token_wise_loss_naive_b{batch}", lambda b=batch: loss_case("naive", b, image_tokens, device), 30)
    run(f"retrieval_{retrieval[0]}x{retrieval[1]}", lambda: retrieval_case(*retrieval, image_tokens, device), 60)
    result["seconds_total"] = round(time.perf_counter() - clock.start, 1)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
