"""Zero-shot pipeline speed: transformers' pipeline("zero-shot-image-classification") with WukongModel
(text feature memo on / off) vs the same pipeline with transformers' ChineseCLIPModel.

Matched size as benchmarks/cpu_inference.py (its `build_models`: ViT-B/32 image tower + 12-layer
BERT-Chinese width 768, projection 256, fp32, random weights from configs, no download). The job:
N generated JPEGs (500x375) through the pipeline, one image per call as the pipeline does, with 10
Chinese labels and hypothesis_template "{}的照片。"; the pipeline decodes, preprocesses, tokenizes
the labels and runs the model for every image. Variants run once per round in the same order (A/B
interleaved in one process); medians over rounds and the median per-round ratio to ChineseCLIPModel;
the load average is written at every round (the machine may be shared). The script checks that
the memo changes no score (memo on == memo off, exactly, global and token-wise heads) and times
what a memo hit costs (fingerprint, key, copies) against the text tower it saves.

    python benchmarks/pipeline_speed.py                      # a few minutes on 2 shared cores
    python benchmarks/pipeline_speed.py --tiny --rounds 1 --out /tmp/x.json   # seconds (the tests)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_inference import MACHINE, build_models, interleaved, synthetic_jpegs  # noqa: E402  (same matched models)

LABELS = ["猫", "狗", "飞机", "汽车", "鸟", "鹿", "青蛙", "马", "轮船", "卡车"]
TEMPLATE = "{}的照片。"


def make_pipeline(model, tokenizer, image_processor):
    from transformers import pipeline

    return pipeline("zero-shot-image-classification", model=model, tokenizer=tokenizer, image_processor=image_processor,
                    device="cpu")


def run_pipeline(classifier, jpegs: list[bytes]) -> list:
    """Every image through the pipeline (decoding included: PIL opens lazily, the processor decodes)."""
    images = [Image.open(io.BytesIO(b)) for b in jpegs]
    return classifier(images, candidate_labels=LABELS, hypothesis_template=TEMPLATE)


def with_memo(model, enabled: bool, fn):
    def run():
        model.text_feature_memo.enabled = enabled
        model.text_feature_memo.clear()  # each run starts cold: the first image pays for the labels
        return fn()

    return run


def memo_cost(model, tokenizer, repeats: int) -> dict:
    """Median seconds of the label batch through the text side: tower + head (memo off) vs a memo hit."""
    inputs = tokenizer([TEMPLATE.format(x) for x in LABELS], padding=True, return_tensors="pt")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    memo = model.text_feature_memo
    times = {"text_side_memo_off": [], "memo_hit": []}
    with torch.no_grad():
        for _ in range(repeats):
            memo.enabled = False
            start = time.perf_counter()
            model._memo_text(ids, mask)
            times["text_side_memo_off"].append(time.perf_counter() - start)
            memo.enabled = True
            model._memo_text(ids, mask)  # fills
            start = time.perf_counter()
            model._memo_text(ids, mask)
            times["memo_hit"].append(time.perf_counter() - start)
    out = {k: round(statistics.median(v) * 1e3, 3) for k, v in times.items()}
    return {f"{k}_ms": v for k, v in out.items()}


def exact_check(model, tokenizer, image_processor, jpegs: list[bytes]) -> dict:
    """Scores with the memo on and off: equal as floats, label by label, image by image."""
    classifier = make_pipeline(model, tokenizer, image_processor)
    model.text_feature_memo.enabled = False
    off = run_pipeline(classifier, jpegs)
    model.text_feature_memo.enabled = True
    model.text_feature_memo.clear()
    hits_before = model.text_feature_memo.hits
    on = run_pipeline(classifier, jpegs)
    hits = model.text_feature_memo.hits - hits_before
    same = all(sorted((r["label"], r["score"]) for r in a) == sorted((r["label"], r["score"]) for r in b)
               for a, b in zip(on, off))
    return {"memo_on_equals_off_exactly": same and len(on) == len(off) == len(jpegs), "memo_hits": hits,
            "images": len(jpegs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "pipeline_speed.json"))
    parser.add_argument("--tiny", action="store_true", help="tiny towers (the tests): checks the script, not speed")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.tiny:
        args.images = min(args.images, 4)
    load_start = os.getloadavg()
    ours, token_wise, processor, peer, peer_processor = build_models(args.tiny)
    jpegs = synthetic_jpegs(args.images)

    ours_pipe = make_pipeline(ours, processor.tokenizer, processor.image_processor)
    peer_pipe = make_pipeline(peer, peer_processor.tokenizer, peer_processor.image_processor)
    variants = {
        "ChineseCLIPModel": lambda: run_pipeline(peer_pipe, jpegs),
        "wukong, text feature memo on (default)": with_memo(ours, True, lambda: run_pipeline(ours_pipe, jpegs)),
        "wukong, text feature memo off": with_memo(ours, False, lambda: run_pipeline(ours_pipe, jpegs)),
    }
    loads: list = []
    print("pipeline ...", file=sys.stderr)
    rows = interleaved(variants, args.rounds, len(jpegs), "ChineseCLIPModel", loads)
    ours.text_feature_memo.enabled = True

    checks = {kind: exact_check(model, processor.tokenizer, processor.image_processor, jpegs[:8])
              for kind, model in (("global", ours), ("token_wise", token_wise))}
    cost = memo_cost(ours, processor.tokenizer, repeats=3 if args.tiny else 7)
    import transformers

    result = {
        "machine": MACHINE, "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "threads": args.threads, "tiny": args.tiny,
        "job": {"images": len(jpegs), "image_size": "500x375 JPEG", "labels": LABELS, "hypothesis_template": TEMPLATE,
                "rounds": args.rounds, "pipeline_batch_size": 1},
        "load_average_start": [round(x, 2) for x in load_start], "load_average_per_round": loads,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "images_per_s": rows, "exact_checks": checks, "text_side_per_call": cost,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"machine: {MACHINE}; load average start {result['load_average_start']}, per round {loads}")
    print(f"{'pipeline':42s} {'img/s':>8s} {'vs peer':>8s}")
    for name, row in rows.items():
        print(f"{name:42s} {row['per_s']:8.2f} {row['vs_peer']:8.2f}")
    print(f"exact checks: {checks}")
    print(f"text side per call: {cost}")


if __name__ == "__main__":
    main()
