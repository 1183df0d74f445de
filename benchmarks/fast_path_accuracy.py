"""Accuracy of the faster inference paths on the demo's held-out set: zero-shot top-1 and R@1.

The trained demo model (`wukong demo`, or --model with its train/final folder) is evaluated as the
demo does (zero-shot over the 20 colour-shape names with the demo's 3 templates; retrieval of the
held-out images and their captions) through each path: PyTorch fp32 (the reference), ONNX
Runtime fp32 (OnnxEncoder), ONNX Runtime int8, torch int8 dynamic quantization, bf16 autocast.
Reports each path's metrics and its difference to the reference, in points.

    wukong demo --out wukong-demo && python benchmarks/fast_path_accuracy.py --model wukong-demo/train/final
    python benchmarks/fast_path_accuracy.py --tiny --out /tmp/x.json    # trains 2 steps (the tests)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from cpu_inference import MACHINE, Bf16Autocast, onnx_int8, torch_int8  # noqa: E402

from wukong_hf.demo import ZERO_SHOT_TEMPLATES, DemoSettings, _labelled, _retrieval_set, run_demo  # noqa: E402


def evaluate(encoder, processor, held_out, classnames) -> dict:
    from wukong_hf.evaluation.retrieval import evaluate_retrieval
    from wukong_hf.evaluation.zero_shot import zero_shot_classification

    zero_shot = zero_shot_classification(encoder, processor, _labelled(held_out, classnames), classnames,
                                         ZERO_SHOT_TEMPLATES)
    retrieval = evaluate_retrieval(encoder, processor, _retrieval_set(held_out, "synthetic-shapes"))
    return {"zero_shot_top1": zero_shot["ensemble"]["top1"], "zero_shot_top1_single": zero_shot["single_prompt"]["top1"],
            "i2t_R@1": retrieval["metrics"]["i2t_R@1"], "t2i_R@1": retrieval["metrics"]["t2i_R@1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="trained demo model folder (wukong-demo/train/final); default: train one")
    parser.add_argument("--eval-size", type=int, default=200, help="held-out images (the demo's default)")
    parser.add_argument("--tiny", action="store_true", help="train 2 steps, 16 images (the tests)")
    parser.add_argument("--skip", default="", help="comma-separated: onnx, int8, bf16")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "fast_path_accuracy.json"))
    args = parser.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    torch.set_num_threads(2)
    from transformers import AutoModel, AutoProcessor

    from wukong_hf.data.synthetic import SyntheticShapes
    from wukong_hf.onnx_encoder import OnnxEncoder, onnx_available

    work = Path(tempfile.mkdtemp(prefix="wukong-fast-acc-"))
    if args.model is None:
        settings = DemoSettings(out=str(work / "demo"), progress=False)
        if args.tiny:
            settings.steps, settings.train_size, settings.eval_size = 2, 64, 16
        run_demo(settings)
        args.model = str(work / "demo" / "train" / "final")
    if args.tiny:
        args.eval_size = min(args.eval_size, 16)
    model = AutoModel.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    generator = SyntheticShapes(image_size=64, seed=0)  # the demo's held-out set (seed 0)
    held_out = generator.examples("held_out", args.eval_size, progress=False)
    paths = {"PyTorch fp32 (reference)": model}
    if onnx_available() and "onnx" not in skip:
        paths["ONNX Runtime fp32"] = OnnxEncoder.from_model(model, work / "onnx")
        if "int8" not in skip:
            paths["ONNX Runtime int8"] = onnx_int8(paths["ONNX Runtime fp32"], work / "onnx-int8")
    if "int8" not in skip:
        paths["torch int8 dynamic"] = torch_int8(model)
    if "bf16" not in skip:
        paths["bf16 autocast"] = Bf16Autocast(model)
    rows = {name: evaluate(encoder, processor, held_out, generator.labels) for name, encoder in paths.items()}
    reference = dict(rows["PyTorch fp32 (reference)"])
    for row in rows.values():
        row.update({f"delta_{k}": round(row[k] - reference[k], 2) for k in reference})
    result = {"machine": MACHINE, "model": args.model, "similarity": model.config.similarity,
              "held_out_images": len(held_out), "classes": len(generator.labels), "templates": ZERO_SHOT_TEMPLATES,
              "rows": rows, "load_average_end": [round(x, 2) for x in os.getloadavg()]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"{'path':28s} {'top-1':>7s} {'i2t R@1':>8s} {'t2i R@1':>8s}   deltas (points)")
    for name, row in rows.items():
        print(f"{name:28s} {row['zero_shot_top1']:7.2f} {row['i2t_R@1']:8.2f} {row['t2i_R@1']:8.2f}   "
              f"{row['delta_zero_shot_top1']:+.2f} {row['delta_i2t_R@1']:+.2f} {row['delta_t2i_R@1']:+.2f}")


if __name__ == "__main__":
    main()
