"""Time converting a full-size released Wukong checkpoint (random weights in the official key layout)
and exporting it for the Hub. Prints a table; writes benchmarks/results/convert_original.json.

    python benchmarks/convert_original.py [--variants wukong-vit-b-32 wukong-vit-b-32-global] [--pickle]

Weights are random (no official file may be downloaded here): sizes, key layout and timings are
those of the real checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from wukong_hf import WukongModel, preset_config
from wukong_hf.convert import convert_original_checkpoint
from wukong_hf.hub import export_model_folder

RESULTS = Path(__file__).parent / "results" / "convert_original.json"


def official_shapes(config) -> dict[str, tuple]:
    """Key -> shape of a released ViT checkpoint of this config (OpenAI-CLIP layout)."""
    model = WukongModel(config)  # read the dimensions from the built towers
    vit = model.vision_model.timm_model
    width, patch, depth = vit.embed_dim, vit.patch_embed.proj.kernel_size[0], len(vit.blocks)
    text = config.text_config
    dim = config.projection_dim
    shapes = {
        "visual.conv1.weight": (width, 3, patch, patch), "visual.class_embedding": (width,),
        "visual.positional_embedding": tuple(vit.pos_embed.shape[1:]), "visual.proj": (width, dim),
        "transformer.token_embedding.weight": (text.vocab_size, text.hidden_size),
        "transformer.positional_embedding": (text.max_position_embeddings, text.hidden_size),
        "transformer.text_projection": (text.hidden_size, dim), "loss.logit_scale": (),
    }
    for norm in ("visual.ln_pre", "visual.ln_post", "transformer.ln_final"):
        size = text.hidden_size if norm.startswith("transformer") else width
        shapes.update({f"{norm}.weight": (size,), f"{norm}.bias": (size,)})
    for prefix, w, hidden, layers in (("visual.transformer", width, 4 * width, depth),
                                      ("transformer", text.hidden_size, text.intermediate_size, text.num_hidden_layers)):
        for n in range(layers):
            p = f"{prefix}.resblocks.{n}."
            shapes.update({
                p + "attn.in_proj_weight": (3 * w, w), p + "attn.in_proj_bias": (3 * w,),
                p + "attn.out_proj.weight": (w, w), p + "attn.out_proj.bias": (w,),
                p + "ln_1.weight": (w,), p + "ln_1.bias": (w,), p + "ln_2.weight": (w,), p + "ln_2.bias": (w,),
                p + "mlp.c_fc.weight": (hidden, w), p + "mlp.c_fc.bias": (hidden,),
                p + "mlp.c_proj.weight": (w, hidden), p + "mlp.c_proj.bias": (w,),
            })
    if config.num_reduced_tokens:
        g, k = config.token_reduction_groups, config.num_reduced_tokens
        shapes.update({
            "visual.token_learner.norm.weight": (dim,), "visual.token_learner.norm.bias": (dim,),
            "visual.token_learner.attention_maps.0.weight": (dim, dim // g, 1, 1),
            "visual.token_learner.attention_maps.1.weight": (k, dim, 1, 1),
            "visual.token_learner.feat_conv.weight": (dim, dim // g, 1, 1),
        })
    return shapes


def run(variant: str, as_pickle: bool, workdir: Path) -> dict:
    shapes = official_shapes(preset_config(variant))
    state = {key: torch.randn(shape) * 0.02 for key, shape in shapes.items()}
    state["loss.logit_scale"] = torch.tensor(math.log(1 / 0.07))
    path = workdir / f"{variant}.{'pkl' if as_pickle else 'ckpt'}"
    if as_pickle:
        with open(path, "wb") as handle:
            pickle.dump({k: v.numpy() for k, v in state.items()}, handle, protocol=4)
    else:
        torch.save({"state_dict": state}, path)
    out = workdir / path.name.replace(".", "-")
    start = time.perf_counter()
    report = convert_original_checkpoint(path, variant, out)
    convert_s = time.perf_counter() - start
    start = time.perf_counter()
    export_model_folder(out, workdir / f"{out.name}-export", repo_id=f"bench/{variant}")
    export_s = time.perf_counter() - start
    return {
        "variant": variant,
        "format": "numpy pickle" if as_pickle else "torch file",
        "parameters_M": round(sum(v.numel() for v in state.values()) / 1e6, 1),
        "checkpoint_MB": round(path.stat().st_size / 2**20, 1),
        "keys": len(state),
        "keys_mapped": len(report.mapped),
        "convert_s": round(convert_s, 1),
        "export_s": round(export_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["wukong-vit-b-32", "wukong-vit-b-32-global"])
    parser.add_argument("--pickle", action="store_true", help="also convert from a numpy-array pickle")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    jobs = [(v, False) for v in args.variants] + ([(args.variants[0], True)] if args.pickle else [])
    with tempfile.TemporaryDirectory() as tmp:
        for variant, as_pickle in tqdm(jobs, desc="converting"):
            rows.append(run(variant, as_pickle, Path(tmp)))
    machine = f"2-core CPU sandbox, no GPU ({platform.processor() or platform.machine()}, torch {torch.__version__})"
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    header = f"{'variant':26s} {'format':13s} {'params M':>9s} {'file MB':>8s} {'keys':>5s} {'convert s':>10s} {'export s':>9s}"
    print(f"machine: {machine}; peak RSS {peak_mb:.0f} MB")
    print(header)
    for r in rows:
        print(f"{r['variant']:26s} {r['format']:13s} {r['parameters_M']:9.1f} {r['checkpoint_MB']:8.1f} {r['keys']:5d} "
              f"{r['convert_s']:10.1f} {r['export_s']:9.1f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine, "peak_rss_MB": round(peak_mb), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
