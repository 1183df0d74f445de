"""CPU inference speed: images/s and captions/s of wukong-hf vs transformers' ChineseCLIPModel.

Matched size: ViT-B/32 image tower (224 px) + 12-layer BERT-Chinese text tower (width 768),
projection 256, fp32, 2 threads, random weights built from configs (no download). Both sides do
the whole job a user runs: decode JPEG bytes, preprocess with their own processor, run the
tower, keep normalised global features; captions: tokenize and run the text tower.

Every variant runs once per round, in the same order each round (A/B interleaved in one process);
the table gives medians over rounds and the median of the per-round ratios to the peer. The load
average is written at every round (the machine may be shared).

Variants: the peer (ChineseCLIPModel, batches padded to 32 or to the longest caption), our code
before this work (sequential reads; captions padded to 32), our exact default (encode_images /
encode_texts), and the options measured for it: torch.inference_mode, channels_last, ONNX Runtime
(OnnxEncoder), int8 dynamic quantization (torch and ONNX Runtime), bf16 autocast, and with
--compile torch.compile. Score checks: global and token-wise logits of the exact paths against
the "before" path (relative max difference), and how far the non-exact ones move them.

    python benchmarks/cpu_inference.py                 # about an hour on 2 heavily shared cores
    python benchmarks/cpu_inference.py --tiny --rounds 1 --out /tmp/x.json   # seconds (the tests)
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wukong_hf import WukongModel, WukongProcessor, preset_config
from wukong_hf.evaluation.encoding import _kept, encode_images, encode_texts, open_rgb
from wukong_hf.evaluation.prompts import fill_template, load_classnames, load_templates
from wukong_hf.features import WukongTextFeatures

MACHINE = "2-core CPU sandbox, no GPU"
TINY_VISION = {"model_type": "timm_wrapper", "architecture": "vit_base_patch32_clip_quickgelu_224", "do_pooling": False,
               "model_args": {"embed_dim": 32, "depth": 2, "num_heads": 4, "patch_size": 8, "img_size": 32}}


def build_models(tiny: bool):
    """(ours global, ours token-wise with the same weights, our processor, peer, peer processor)."""
    from transformers import ChineseCLIPConfig, ChineseCLIPImageProcessor, ChineseCLIPModel, ChineseCLIPProcessor

    torch.manual_seed(0)
    if tiny:
        config = preset_config("tiny-global")
        width, layers, heads, ffn, patch, size, proj = 32, 2, 4, 64, 8, 32, 16
    else:
        config = preset_config("paper-vit-b-32-global")
        width, layers, heads, ffn, patch, size, proj = 768, 12, 12, 3072, 32, 224, 256
    ours = WukongModel(config).eval()
    token_wise = WukongModel(preset_config("tiny-token-wise" if tiny else "paper-vit-b-32-token-wise")).eval()
    token_wise.load_state_dict(ours.state_dict())
    processor = WukongProcessor.from_config(config)
    peer_config = ChineseCLIPConfig(
        text_config={"vocab_size": 21128, "hidden_size": width, "num_hidden_layers": layers, "num_attention_heads": heads,
                     "intermediate_size": ffn},
        vision_config={"hidden_size": width, "intermediate_size": ffn, "num_hidden_layers": layers,
                       "num_attention_heads": heads, "patch_size": patch, "image_size": size},
        projection_dim=proj,
    )
    peer = ChineseCLIPModel(peer_config).eval()
    peer_processor = ChineseCLIPProcessor(
        image_processor=ChineseCLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        tokenizer=processor.tokenizer,
    )
    return ours, token_wise, processor, peer, peer_processor


def synthetic_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """n photo-like JPEGs (500x375: smooth colour fields plus noise, as Flickr-size pictures)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = rng.random((6, 8, 3)) * 255
        image = Image.fromarray(low.astype("uint8")).resize((500, 375), Image.BICUBIC)
        array = np.asarray(image).astype(np.float32) + rng.normal(0, 12, (375, 500, 3))
        buffer = io.BytesIO()
        Image.fromarray(array.clip(0, 255).astype("uint8")).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def prompt_texts(n: int, seed: int = 0) -> list[str]:
    """n of the 80,000 ImageNet prompts (80 Chinese templates x 1000 class names), drawn at random."""
    names, templates = load_classnames("imagenet1k"), load_templates("imagenet1k")
    rng = np.random.default_rng(seed)
    return [fill_template(templates[int(rng.integers(len(templates)))], names[int(rng.integers(len(names)))]) for _ in range(n)]


def caption_texts(processor, n: int, seed: int = 0) -> list[str]:
    """n captions of 8..36 random CJK characters: after truncation to 30 characters about 22 tokens
    with [CLS]/[SEP], the Wukong dataset's mean (docs/wukong-facts.md)."""
    vocab = [t for t in processor.tokenizer.get_vocab() if len(t) == 1 and "\u4e00" <= t <= "\u9fff"]
    rng = np.random.default_rng(seed)
    return ["".join(vocab[int(i)] for i in rng.integers(len(vocab), size=int(rng.integers(8, 37)))) for _ in range(n)]


# ----- the jobs -------------------------------------------------------------------------------------
def peer_images(peer, peer_processor, jpegs, batch):
    with torch.no_grad():
        for start in range(0, len(jpegs), batch):
            images = [open_rgb(b) for b in jpegs[start:start + batch]]
            pixels = peer_processor(images=images, return_tensors="pt")["pixel_values"]
            embeds = peer.get_image_features(pixel_values=pixels)
            torch.nn.functional.normalize(getattr(embeds, "pooler_output", embeds), dim=-1)


def peer_texts(peer, peer_processor, texts, batch, padding):
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            inputs = peer_processor(text=texts[start:start + batch], padding=padding, max_length=32, truncation=True,
                                    return_tensors="pt")
            embeds = peer.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            torch.nn.functional.normalize(getattr(embeds, "pooler_output", embeds), dim=-1)


def before_images(model, processor, jpegs, batch):
    """Our encode_images as it was: read and preprocess a batch, then run the tower, in turn."""
    with torch.no_grad():
        for start in range(0, len(jpegs), batch):
            pixels = processor(images=[open_rgb(b) for b in jpegs[start:start + batch]])["pixel_values"]
            _kept(model.encode_image(pixels), model)


def before_texts(model, processor, texts, batch):
    """Our encode_texts as it was: every batch padded to the tower's 32 tokens, input order."""
    banks = []
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            inputs = processor(text=texts[start:start + batch])
            banks.append(_kept(model.encode_text(inputs["input_ids"], inputs["attention_mask"]), model))
    return WukongTextFeatures.concat(banks)


class Bf16Autocast:
    """A model wrapper that runs both towers under CPU bf16 autocast (opt-in candidate)."""

    def __init__(self, model):
        self.model, self.config = model, model.config

    similarity_rule = property(lambda self: self.model.similarity_rule)
    parameters = property(lambda self: self.model.parameters)

    def encode_image(self, pixel_values):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model.encode_image(pixel_values).to(dtype=torch.float32)

    def encode_text(self, input_ids, attention_mask=None):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model.encode_text(input_ids, attention_mask).to(dtype=torch.float32)


def torch_int8(model):
    """int8 dynamic quantization of every nn.Linear (torch.ao, fbgemm): weights int8, activations per batch."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)


def onnx_int8(encoder, folder: Path):
    """ONNX Runtime's dynamic int8 quantization of both exported graphs (MatMul weights int8)."""
    import logging
    import shutil

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process the graph is for static quantization

    from wukong_hf.onnx_encoder import OnnxEncoder

    shutil.copytree(encoder.folder, folder, dirs_exist_ok=True)
    for name in ("image.onnx", "text.onnx"):
        quantize_dynamic(str(encoder.folder / name), str(folder / name), weight_type=QuantType.QInt8)
    return OnnxEncoder.load(folder)


# ----- measurement --------------------------------------------------------------------------------
def interleaved(variants: dict, rounds: int, items: int, peer_name: str, loads: list) -> dict:
    """Run every variant once per round, in order; items/s medians and median per-round ratio to the peer."""
    for fn in variants.values():  # warm-up: first-call allocations, lazy inits
        fn()
    seconds = {name: [] for name in variants}
    for r in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
        loads.append(round(os.getloadavg()[0], 2))
        print(f"  round {r + 1}/{rounds} done, load {loads[-1]}", file=sys.stderr)
    rows = {}
    for name, times in seconds.items():
        ratios = [p / t for p, t in zip(seconds[peer_name], times)]
        rows[name] = {"per_s": round(items / statistics.median(times), 2), "vs_peer": round(statistics.median(ratios), 2),
                      "seconds": [round(t, 3) for t in times]}
    return rows


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / a.abs().max().clamp(min=1e-12))


def score_checks(ours, token_wise, processor, jpegs, texts, encoders: dict) -> dict:
    """Relative max difference of logits (global and token-wise) of each path vs the "before" path."""
    checks = {}
    for kind, model in (("global", ours), ("token_wise", token_wise)):
        pixels = processor(images=[open_rgb(b) for b in jpegs])["pixel_values"]
        with torch.no_grad():
            reference_images = _kept(model.encode_image(pixels), model)
        reference_texts = before_texts(model, processor, texts, 64)
        reference = model.score(reference_images, reference_texts)
        loaders = [lambda b=b: open_rgb(b) for b in jpegs]
        for name, make in encoders.items():
            encoder = make(model)
            if encoder is None:
                continue
            images, _, _ = encode_images(encoder, processor, loaders, batch_size=8, progress=False)
            feats = encode_texts(encoder, processor, texts, batch_size=16, progress=False)
            logits = model.score(images, feats)
            checks[f"{kind}: {name}"] = {
                "logits_per_image": relative_difference(reference[0], logits[0]),
                "logits_per_text": relative_difference(reference[1], logits[1]),
            }
    return checks


def positions_fed(processor, texts: list[str], batch: int) -> dict:
    """Text positions the tower runs on per caption (machine-independent): padded to 32, to each
    batch's longest in input order, and to each batch's longest after sorting by length."""
    lengths = [len(ids) for ids in processor(text=texts, padding=False, return_tensors=None)["input_ids"]]

    def per_caption(order):
        batches = [order[i:i + batch] for i in range(0, len(order), batch)]
        return round(sum(max(lengths[j] for j in b) * len(b) for b in batches) / len(lengths), 2)

    return {"real_tokens": round(sum(lengths) / len(lengths), 2), "padded_to_32": float(processor.max_length),
            "batch_longest_input_order": per_caption(list(range(len(lengths)))),
            "batch_longest_sorted": per_caption(sorted(range(len(lengths)), key=lambda j: -lengths[j]))}


def share_of_head(model, processor, jpegs, texts) -> dict:
    """How much of encode_image / encode_text a global model spends in the per-token head it does not need."""
    pixels = processor(images=[open_rgb(b) for b in jpegs])["pixel_values"]
    inputs = processor(text=texts)
    times = {"image_tower": [], "image_head": [], "text_tower": [], "text_head": []}
    with torch.no_grad():
        for _ in range(3):
            t0 = time.perf_counter()
            tower = model.image_tower(pixels)
            t1 = time.perf_counter()
            model.image_head(tower)
            t2 = time.perf_counter()
            out, mask = model._text_tower(inputs["input_ids"], inputs["attention_mask"])
            t3 = time.perf_counter()
            model._text_head(out.last_hidden_state, mask)
            t4 = time.perf_counter()
            for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[key].append(value)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"image_head_share": round(med["image_head"] / (med["image_tower"] + med["image_head"]), 4),
            "text_head_share": round(med["text_head"] / (med["text_tower"] + med["text_head"]), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_inference.json"))
    parser.add_argument("--tiny", action="store_true", help="tiny towers (the tests): checks the script, not speed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--captions", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")
    parser.add_argument("--text-batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma-separated: onnx, int8, bf16, layout (channels_last, inference_mode)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the towers (minutes of compiling)")
    parser.add_argument("--counts-only", action="store_true",
                        help="only add the (untimed) text positions fed to the tower to an existing --out file")
    args = parser.parse_args()
    if args.counts_only:
        processor = WukongProcessor.from_defaults()
        result = json.loads(Path(args.out).read_text(encoding="utf-8"))
        all_prompts = [fill_template(t, c) for c in load_classnames("imagenet1k") for t in load_templates("imagenet1k")]
        result["text_positions_per_caption"] = {
            "ImageNet prompts (benchmark sample)": positions_fed(processor, prompt_texts(args.captions), args.text_batch_size),
            "Wukong-length captions (benchmark sample)": positions_fed(processor, caption_texts(processor, args.captions),
                                                                       args.text_batch_size),
            "all 80,000 ImageNet prompts, batch 256 (zero-shot)": positions_fed(processor, all_prompts, 256),
        }
        Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
        print(json.dumps(result["text_positions_per_caption"], indent=1))
        return
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    torch.set_num_threads(args.threads)
    if args.tiny:
        args.images, args.captions = min(args.images, 8), min(args.captions, 32)
    load_start = os.getloadavg()
    ours, token_wise, processor, peer, peer_processor = build_models(args.tiny)
    jpegs = synthetic_jpegs(args.images)
    loaders = [lambda b=b: open_rgb(b) for b in jpegs]
    sets = {"ImageNet prompts": prompt_texts(args.captions), "Wukong-length captions": caption_texts(processor, args.captions)}

    import tempfile

    from wukong_hf.onnx_encoder import OnnxEncoder, onnx_available

    use_onnx = onnx_available() and "onnx" not in skip
    work = Path(tempfile.mkdtemp(prefix="wukong-bench-"))
    onnx = OnnxEncoder.from_model(ours, work / "onnx") if use_onnx else None
    onnx_q = onnx_int8(onnx, work / "onnx-int8") if use_onnx and "int8" not in skip else None
    int8 = torch_int8(ours) if "int8" not in skip else None
    bf16 = Bf16Autocast(ours) if "bf16" not in skip else None
    compiled = None
    if args.compile:
        compiled = copy.copy(ours)
        compiled.vision_model = torch.compile(ours.vision_model)
        compiled.text_model = torch.compile(ours.text_model)
    b, tb = args.batch_size, args.text_batch_size

    image_variants = {
        "ChineseCLIPModel": lambda: peer_images(peer, peer_processor, jpegs, b),
        "wukong before (sequential reads)": lambda: before_images(ours, processor, jpegs, b),
        "wukong encode_images (exact default)": lambda: encode_images(ours, processor, loaders, b, progress=False),
    }
    if "layout" not in skip:
        def inference_mode():
            with torch.inference_mode():
                encode_images(ours, processor, loaders, b, progress=False)

        channels_last = copy.deepcopy(ours).to(memory_format=torch.channels_last)

        def channels_last_run():
            with torch.no_grad():
                for start in range(0, len(jpegs), b):
                    pixels = processor(images=[open_rgb(x) for x in jpegs[start:start + b]])["pixel_values"]
                    _kept(channels_last.encode_image(pixels.contiguous(memory_format=torch.channels_last)), channels_last)

        image_variants["+ torch.inference_mode"] = inference_mode
        image_variants["+ channels_last"] = channels_last_run
    opt_in = {"ONNX Runtime fp32 (opt-in)": onnx, "ONNX Runtime int8 (opt-in)": onnx_q, "torch int8 dynamic": int8,
              "bf16 autocast": bf16, "torch.compile": compiled}
    for name, encoder in opt_in.items():
        if encoder is not None:
            image_variants[name] = lambda e=encoder: encode_images(e, processor, loaders, b, progress=False)

    loads: list = []
    print("images ...", file=sys.stderr)
    image_rows = interleaved(image_variants, args.rounds, len(jpegs), "ChineseCLIPModel", loads)

    text_rows = {}
    for set_name, texts in sets.items():
        variants = {
            "ChineseCLIPModel, padded to 32": lambda t=texts: peer_texts(peer, peer_processor, t, tb, "max_length"),
            "ChineseCLIPModel, padded to batch longest": lambda t=texts: peer_texts(peer, peer_processor, t, tb, True),
            "wukong before (padded to 32)": lambda t=texts: before_texts(ours, processor, t, tb),
            "wukong batch longest, input order": lambda t=texts: encode_texts(ours, processor, t, tb, progress=False,
                                                                              sort_by_length=False),
            "wukong encode_texts (sorted, exact default)": lambda t=texts: encode_texts(ours, processor, t, tb, progress=False),
        }
        if "layout" not in skip:
            def text_inference_mode(t=texts):
                with torch.inference_mode():
                    encode_texts(ours, processor, t, tb, progress=False)

            variants["+ torch.inference_mode"] = text_inference_mode
        for name, encoder in opt_in.items():
            if encoder is not None:
                variants[name] = lambda e=encoder, t=texts: encode_texts(e, processor, t, tb, progress=False)
        print(f"captions: {set_name} ...", file=sys.stderr)
        text_rows[set_name] = interleaved(variants, args.rounds, len(texts), "ChineseCLIPModel, padded to 32", loads)
        lengths = [len(ids) for ids in processor(text=texts, padding=False, return_tensors=None)["input_ids"]]
        text_rows[set_name]["_mean_tokens"] = round(statistics.mean(lengths), 1)

    check_encoders = {
        "encode_images/encode_texts (exact default)": lambda m: m,
        "ONNX Runtime fp32": (lambda m: OnnxEncoder.from_model(m, work / f"check-{m.config.similarity}")) if use_onnx else (lambda m: None),
        "torch int8 dynamic": (lambda m: torch_int8(m)) if "int8" not in skip else (lambda m: None),
        "bf16 autocast": (lambda m: Bf16Autocast(m)) if "bf16" not in skip else (lambda m: None),
    }
    checks = score_checks(ours, token_wise, processor, jpegs[:8], sets["Wukong-length captions"][:48] +
                          sets["ImageNet prompts"][:16], check_encoders)
    head = share_of_head(ours, processor, jpegs[:16], sets["Wukong-length captions"][:64])
    import transformers

    result = {
        "machine": MACHINE, "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "threads": args.threads, "tiny": args.tiny,
        "sizes": {"images": len(jpegs), "image_batch": b, "captions": args.captions, "text_batch": tb, "rounds": args.rounds},
        "load_average_start": [round(x, 2) for x in load_start], "load_average_per_round": loads,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "images_per_s": image_rows, "captions_per_s": text_rows, "score_checks": checks, "global_model_head_share": head,
        "attention": {"ours_text": ours.text_model.config._attn_implementation, "peer": peer.config._attn_implementation},
    }
    if use_onnx:
        import onnxruntime

        result["onnxruntime"] = onnxruntime.__version__
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"machine: {MACHINE}; load average start {result['load_average_start']}, per round {loads}")
    print(f"{'images':48s} {'img/s':>8s} {'vs peer':>8s}")
    for name, row in image_rows.items():
        print(f"{name:48s} {row['per_s']:8.2f} {row['vs_peer']:8.2f}")
    for set_name, rows in text_rows.items():
        print(f"{set_name} (mean {rows['_mean_tokens']} tokens) {'captions/s':>10s} {'vs peer@32':>10s}")
        for name, row in rows.items():
            if not name.startswith("_"):
                print(f"  {name:46s} {row['per_s']:8.2f} {row['vs_peer']:8.2f}")
    for name, check in checks.items():
        print(f"score check {name}: {check}")
    print(f"global model head share: {head}")


if __name__ == "__main__":
    main()
