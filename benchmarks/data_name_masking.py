"""Person-name masking quality: precision and recall of the fast masker and of jieba.posseg alone (the baseline)
on the labelled caption set tests/data/name_masking_captions.jsonl, and their speed on it.

The set: 491 captions written for this project, 228 labelled names (2- and 3-character Han names, compound
surnames, names with titles, celebrities, transliterated foreign names, names next to other words) and
272 captions of everyday words that jieba's dictionary tags as names (animals, plants, scenery and idioms,
brands, places, products, home decor, wallpaper/download boilerplate, food). One third ("heldout",
stratified by category) was set aside before the masker was tuned on the rest ("dev").

Scoring (wukong_hf.data.text_filters.name_masking_scores): a masked span is correct when it lies inside a
labelled name; a name is found when all its letters are masked.
Usage: python benchmarks/data_name_masking.py    Writes benchmarks/results/data_name_masking.json.
"""

from __future__ import annotations

import json
import os
import time

from wukong_hf.data.text_filters import name_masking_scores, name_spans

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELLED = os.path.join(ROOT, "tests", "data", "name_masking_captions.jsonl")


def load_labelled(path: str = LABELLED) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def main() -> None:
    examples = load_labelled()
    splits = {split: [e for e in examples if e["split"] == split] for split in ("dev", "heldout", "heldout2", "heldout3")}
    splits["all"] = examples
    name_spans(examples[0]["caption"], "fast"), name_spans(examples[0]["caption"], "posseg")  # load jieba before timing
    result = {
        "machine": "2-core CPU sandbox, no GPU (shared with other jobs: timings are noisy)",
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "labelled_set": os.path.relpath(LABELLED, ROOT),
        "captions": {split: len(rows) for split, rows in splits.items()},
        "names": {split: sum(len(e["names"]) for e in rows) for split, rows in splits.items()},
    }
    for masker in ("posseg", "fast"):
        start = time.perf_counter()
        for _ in range(5):
            for example in examples:
                name_spans(example["caption"], masker)
        per_second = 5 * len(examples) / (time.perf_counter() - start)
        scores = {split: name_masking_scores(rows, lambda caption, m=masker: name_spans(caption, m)) for split, rows in splits.items()}
        result[masker] = {
            "captions_per_s_masking_only": round(per_second),
            **{split: {k: v for k, v in s.items() if k not in ("false_positives", "missed")} for split, s in scores.items()},
            "false_positives_all": scores["all"]["false_positives"],
            "missed_all": scores["all"]["missed"],
        }
    print(f"{'masker':8s} {'split':8s} {'precision':>9s} {'recall':>7s} {'spans':>6s} {'names':>6s}")
    for masker in ("posseg", "fast"):
        for split in ("dev", "heldout", "heldout2", "heldout3", "all"):
            s = result[masker][split]
            print(f"{masker:8s} {split:8s} {s['precision']:9.4f} {s['recall']:7.4f} {s['spans_found']:6d} {s['names']:6d}")
    print(f"captions/s (masking only): posseg {result['posseg']['captions_per_s_masking_only']}, fast {result['fast']['captions_per_s_masking_only']}")
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", "data_name_masking.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2, ensure_ascii=False)


if __name__ == "__main__":
    main()
