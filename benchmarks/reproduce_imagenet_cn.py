"""Reproduce the released Wukong models' ImageNet-CN zero-shot top-1 and print the difference.

For each released checkpoint given, the script converts it (`wukong convert original`, official
scoring rules), evaluates zero-shot classification on the ImageNet-1k validation images with the
1,000 Chinese class names and the 80 Chinese templates of the release (single prompt and the
80-prompt ensemble), and prints measured, reported and difference. Needs the checkpoints and the
images (not downloadable here) and, for a run in reasonable time, a GPU:

    python benchmarks/reproduce_imagenet_cn.py --imagenet ILSVRC/Data/CLS-LOC/val \\
        --checkpoint wukong-vit-b-32-global=ckpt/wukong_vit_b_g.ckpt \\
        --checkpoint wukong-vit-b-32=ckpt/wukong_vit_b.ckpt ... [--device cuda] [--batch-size 256]

--imagenet is an ImageFolder tree (one folder per WordNet id, the layout the official code reads);
a PATH that is a folder is taken as an already converted model. `--smoke` runs the whole script on
a tiny random model and a few generated images (what the tests run, so the script does not rot).
Results go to benchmarks/results/reproduce_imagenet_cn.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch


def reported(variant: str) -> tuple[float, float] | None:
    from wukong_hf.hub import REPORTED_IMAGENET_CN

    return REPORTED_IMAGENET_CN.get(variant)


def model_folder(variant: str, path: Path, work: Path) -> Path:
    """A converted model folder for `path` (converted now unless it already is one)."""
    if path.is_dir():
        return path
    from wukong_hf.convert import convert_original_checkpoint

    out = work / variant
    if not (out / "config.json").is_file():
        print(convert_original_checkpoint(path, variant, out).summary(), flush=True)
    return out


def evaluate(folder: Path, images, classnames, templates, device: str, batch_size: int) -> dict:
    from transformers import AutoModel, AutoProcessor

    from wukong_hf.evaluation.zero_shot import zero_shot_classification

    model = AutoModel.from_pretrained(folder).eval().to(device)
    processor = AutoProcessor.from_pretrained(folder)
    return zero_shot_classification(model, processor, images, classnames, templates, batch_size=batch_size,
                                    dataset_name="imagenet1k-cn", split="validation")


def smoke_inputs(work: Path) -> tuple[list[tuple[str, Path]], Path, list[str], list[str]]:
    """A tiny random model and three generated classes of images, named like ImageNet's first classes."""
    import numpy as np
    from PIL import Image

    import wukong_hf
    from wukong_hf.evaluation.prompts import load_classnames, load_templates

    torch.manual_seed(0)
    config = wukong_hf.preset_config("tiny-reduced").use_scoring_rule("official")
    wukong_hf.WukongModel(config).save_pretrained(work / "tiny")
    wukong_hf.WukongProcessor.from_config(config).save_pretrained(work / "tiny")
    rng = np.random.default_rng(0)
    for c, wnid in enumerate(("n01440764", "n01443537", "n01484850")):
        (work / "val" / wnid).mkdir(parents=True)
        for i in range(4):
            pixels = (rng.random((40 + 7 * i, 56, 3)) * 80 + 60 * c).astype("uint8")
            Image.fromarray(pixels).save(work / "val" / wnid / f"ILSVRC2012_val_{c}{i}.JPEG")
    return [("wukong-vit-b-32", work / "tiny")], work / "val", load_classnames("imagenet1k")[:3], load_templates("imagenet1k")[:3]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--imagenet", help="ImageNet-1k validation ImageFolder (one folder per WordNet id)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="VARIANT=PATH",
                        help="released variant (see `wukong presets`, wukong-*) and its checkpoint file or converted folder")
    parser.add_argument("--work", help="folder for converted models (default: a temporary folder)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "reproduce_imagenet_cn.json"))
    parser.add_argument("--smoke", action="store_true", help="tiny random model and generated images: checks the script")
    args = parser.parse_args(argv)

    from wukong_hf.evaluation.image_sources import image_folder_images
    from wukong_hf.evaluation.prompts import load_classnames, load_templates

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        if args.smoke:
            entries, root, classnames, templates = smoke_inputs(work)
        else:
            if not args.imagenet or not args.checkpoint:
                parser.error("give --imagenet and at least one --checkpoint VARIANT=PATH (or --smoke)")
            entries = []
            for item in args.checkpoint:
                variant, sep, path = item.partition("=")
                if not sep or not Path(path).exists():
                    parser.error(f"--checkpoint {item!r}: expected VARIANT=PATH with an existing file or folder")
                entries.append((variant, Path(path)))
            root, classnames, templates = Path(args.imagenet), load_classnames("imagenet1k"), load_templates("imagenet1k")
        images = image_folder_images(root)
        if len(images.folder_classes) != len(classnames):
            print(f"warning: {root} has {len(images.folder_classes)} class folders, the names list {len(classnames)}",
                  file=sys.stderr)
        rows = []
        for variant, path in entries:
            started = time.perf_counter()
            result = evaluate(model_folder(variant, path, work), images, classnames, templates, args.device,
                              args.batch_size)
            single, ensemble = result["single_prompt"]["top1"], result["ensemble"]["top1"]
            expected = reported(variant)
            rows.append({
                "variant": variant, "measured_single": round(single, 2), "measured_ensemble": round(ensemble, 2),
                "reported_single": expected and expected[0], "reported_ensemble": expected and expected[1],
                "difference_single": expected and round(single - expected[0], 2),
                "difference_ensemble": expected and round(ensemble - expected[1], 2),
                "ensemble_method": result["ensemble_method"], "num_images": result["num_images"],
                "seconds": round(time.perf_counter() - started, 1),
            })
    print("| variant | single (measured / reported / diff) | 80 prompts (measured / reported / diff) |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['measured_single']} / {r['reported_single']} / {r['difference_single']} | "
              f"{r['measured_ensemble']} / {r['reported_ensemble']} / {r['difference_ensemble']} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, " + (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU")
    out.write_text(json.dumps({"machine": machine, "smoke": args.smoke, "rows": rows}, indent=1, ensure_ascii=False),
                   encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
