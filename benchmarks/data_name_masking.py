"""Person-name masking quality: precision and recall of each masker on the labelled caption set
tests/data/name_masking_captions.jsonl, per split, and their speed on it (masking only, one core).

Maskers (wukong_hf.data.text_filters.NAME_MASKERS): tagger (the default: LAC, the BiGRU-CRF model bundled in
jieba's wheel, and jieba.posseg propose spans; wukong_hf.data.name_classifier keeps the names), fast (jieba's
dictionary + surname tables + rules) and posseg (every jieba.posseg nr token: the baseline of issue 15's target,
precision >= 0.95 with recall >= posseg's).

The set: captions written for this project: person names of many forms (2- and 3-character Han names, rare and
compound surnames, names with titles, nicknames, celebrities, transliterated foreign names, historical and
fictional people) and everyday words that jieba's dictionary tags as names (animals, plants, idioms, brands,
shops, dishes and places named after people, products, food, home decor, boilerplate). Splits:
- the classifier's training splits (dev, heldout..heldout6, train9, train10): it is fitted on them, so its
  numbers there are in-sample; its cross-validated numbers (each split scored by a classifier fitted on the
  others) are stored in the classifier file and copied into the result;
- the test splits (name_classifier.TEST_SPLITS: heldout7, heldout8): written by two writers who saw no masker
  and no masker output, before the classifier was designed, and scored once after it was frozen.

Scoring (wukong_hf.data.text_filters.name_masking_scores): a masked span is correct when it lies inside a
labelled name; a name is found when all its letters are masked.
Usage: python benchmarks/data_name_masking.py [--other-taggers]
Writes benchmarks/results/data_name_masking.json. --other-taggers also scores thulac (np), jiagu (nh*) and
snownlp (nr) alone, which need `pip install thulac jiagu snownlp` (not dependencies of the project).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from wukong_hf.data.name_classifier import TEST_SPLITS, NameSpanClassifier
from wukong_hf.data.text_filters import NAME_MASKERS, find_name_spans, name_masking_scores

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELLED = os.path.join(ROOT, "tests", "data", "name_masking_captions.jsonl")
TRAINING = ("dev", "heldout", "heldout2", "heldout3", "heldout4", "heldout5", "heldout6", "heldout7", "heldout8", "train9", "train10")
SPLITS = {**{split: (split,) for split in TRAINING + TEST_SPLITS}, "training": TRAINING, "test": TEST_SPLITS}


def load_labelled(path: str = LABELLED) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _token_spans(pairs, is_name) -> list[tuple[int, int]]:
    spans, position = [], 0
    for word, tag in pairs:
        if is_name(tag):
            spans.append((position, position + len(word)))
        position += len(word)
    return spans


def other_taggers() -> dict:
    """{name: captions -> spans} for the taggers tried besides LAC (each alone, its own segmentation)."""
    import jiagu
    import thulac
    from snownlp import SnowNLP

    thu = thulac.thulac()
    return {
        "thulac": lambda captions: [_token_spans(thu.cut(c), lambda t: t == "np") for c in captions],
        "jiagu": lambda captions: [_token_spans(zip(w := jiagu.seg(c), jiagu.pos(w)), lambda t: t in ("nh", "nhf", "nhs")) for c in captions],
        "snownlp": lambda captions: [_token_spans(SnowNLP(c).tags, lambda t: t.startswith("nr")) for c in captions],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--other-taggers", action="store_true", help="also score thulac, jiagu and snownlp (pip install them first)")
    args = parser.parse_args()
    examples = load_labelled()
    captions = [e["caption"] for e in examples]
    maskers = {m: (lambda cs, m=m: find_name_spans(cs, m)) for m in NAME_MASKERS}
    if args.other_taggers:
        maskers.update(other_taggers())
    result = {
        "machine": "2-core CPU sandbox, no GPU (shared with other jobs: timings are noisy)",
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "labelled_set": os.path.relpath(LABELLED, ROOT),
        "mean_caption_chars": round(statistics.mean(map(len, captions)), 1),
        "captions": {split: sum(e["split"] in parts for e in examples) for split, parts in SPLITS.items()},
        "names": {split: sum(len(e["names"]) for e in examples if e["split"] in parts) for split, parts in SPLITS.items()},
    }
    for name, find in maskers.items():
        find(captions[:50])  # load dictionaries and models before timing
        start = time.perf_counter()
        spans = dict(zip(captions, find(captions)))
        per_second = len(captions) / (time.perf_counter() - start)
        scores = {split: name_masking_scores([e for e in examples if e["split"] in parts], spans.__getitem__)
                  for split, parts in SPLITS.items()}
        result[name] = {
            "captions_per_s_masking_only": round(per_second),
            **{split: {k: v for k, v in s.items() if k not in ("false_positives", "missed")} for split, s in scores.items()},
            "false_positives_test": scores["test"]["false_positives"],
            "missed_test": scores["test"]["missed"],
        }
    classifier = NameSpanClassifier.from_file().metadata
    result["tagger"]["classifier"] = {k: classifier[k] for k in ("threshold", "training_splits", "training_captions")}
    result["tagger"]["training_cross_validated"] = classifier["cross_validation"][str(classifier["threshold"])]
    print(f"{'masker':8s} " + " ".join(f"{split:>13s}" for split in SPLITS) + "  captions/s")
    for name in maskers:
        row = " ".join(f"{result[name][split]['precision']:6.3f}/{result[name][split]['recall']:.3f}" for split in SPLITS)
        print(f"{name:8s} {row}  {result[name]['captions_per_s_masking_only']}")
    print("cells: precision/recall")
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", "data_name_masking.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2, ensure_ascii=False)


if __name__ == "__main__":
    main()
