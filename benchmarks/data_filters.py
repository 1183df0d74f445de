"""Caption filter chain speed (captions/s on one core) with each name masker (tagger, the default; fast;
posseg) and agreement of the tagger and fast maskers with jieba.posseg.

Name-masking quality is measured on labelled captions in benchmarks/data_name_masking.py; the planted-name
recall here is on word salad, where planted names often collide with dictionary words (高超, 黄平).

Corpus: synthetic captions built from jieba dictionary words and out-of-dictionary fragments, with planted person names, file names,
URLs, frequent captions and sensitive words. Usage: python benchmarks/data_filters.py [--n 100000]
Writes benchmarks/results/data_filters.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time

from wukong_hf.data.caption_counts import count_caption_hashes, load_frequent_hashes, merge_caption_counts
from wukong_hf.data.text_filters import CaptionFilter, FilterReport, TextFilterConfig, filter_captions

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰涛明超秀霞平刚桂英华玉萍红"
SENSITIVE = ["违禁词一", "违禁词二", "违禁词三"]
COMMON_CHARS = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处府研"



def synthetic_corpus(n: int, seed: int = 0) -> tuple[list[str], dict[int, str]]:
    """n captions and {caption index: planted person name}."""
    import jieba

    jieba.setLogLevel(60)
    jieba.initialize()
    rng = random.Random(seed)
    words = sorted(w for w, f in jieba.dt.FREQ.items() if f > 2000 and 2 <= len(w) <= 4)
    frequent = ["查看源网页", "展开全文", "点击查看大图"]
    captions, planted = [], {}
    for index in range(n):
        r = rng.random()
        if r < 0.02:
            captions.append(rng.choice(frequent))
        elif r < 0.04:
            captions.append(rng.choice([f"{rng.randrange(1000):03d}.jpg", f"https://img.example.com/{rng.randrange(10**6)}.png", str(rng.randrange(10**6))]))
        else:
            parts = [rng.choice(words) for _ in range(rng.randint(2, 16))]
            for _ in range(rng.choice((0, 0, 1, 2, 3))):  # out-of-dictionary fragments make jieba run its HMM, as web captions do
                parts.insert(rng.randrange(len(parts) + 1), "".join(rng.choice(COMMON_CHARS) for _ in range(rng.randint(2, 3))))
            if r < 0.30:  # a planted person name
                name = rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.randint(1, 2)))
                parts.insert(rng.randrange(len(parts) + 1), name)
                planted[index] = name
            if r > 0.99:
                parts.append(rng.choice(SENSITIVE))
            captions.append("".join(parts))
    return captions, planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000, help="corpus size")
    parser.add_argument("--agreement-n", type=int, default=10_000, help="captions compared with posseg (posseg is slow)")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]  # other jobs on the machine slow every timing below
    captions, planted = synthetic_corpus(args.n)
    rows = [{"caption": c} for c in captions]

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        count_caption_hashes(captions, tmp, num_partitions=64)
        merge_caption_counts(tmp)
        count_seconds = time.perf_counter() - start
        frequent = load_frequent_hashes(tmp)

    chain_rate, reports, kept = {}, {}, {}
    for masker in ("tagger", "fast"):
        config = TextFilterConfig(sensitive_words=SENSITIVE, name_masker=masker)
        list(filter_captions(rows[:300], config, frequent))  # load jieba's dictionary and the tagger before timing
        reports[masker] = FilterReport()
        start = time.perf_counter()
        kept[masker] = sum(1 for _ in filter_captions(rows, config, frequent, reports[masker]))
        chain_rate[masker] = args.n / (time.perf_counter() - start)

    sample = captions[: args.agreement_n]
    posseg_filter = CaptionFilter(TextFilterConfig(sensitive_words=SENSITIVE, name_masker="posseg"), frequent)
    start = time.perf_counter()
    reference = [posseg_filter(c) for c in sample]
    posseg_seconds = time.perf_counter() - start
    outputs = {m: CaptionFilter(TextFilterConfig(sensitive_words=SENSITIVE, name_masker=m), frequent).filter_batch(sample)
               for m in ("tagger", "fast")}

    def recall(outputs) -> float:
        """Share of planted names (in kept captions) that no longer appear after masking."""
        hits = [planted[i] not in out for i, (out, _) in enumerate(outputs) if i in planted and out is not None]
        return round(sum(hits) / max(len(hits), 1), 4)

    result = {
        "machine": "2-core CPU sandbox, no GPU (shared with other jobs: timings are noisy)",
        "load_average_1min_at_start": round(load_at_start, 2),
        "corpus_captions": args.n,
        "count_pass_captions_per_s": round(args.n / count_seconds),
        "chain_tagger_captions_per_s_per_core": round(chain_rate["tagger"]),
        "chain_fast_captions_per_s_per_core": round(chain_rate["fast"]),
        "chain_posseg_captions_per_s_per_core": round(len(sample) / posseg_seconds),
        "hours_for_101M_on_64_cores_tagger": round(101_483_885 / (chain_rate["tagger"] * 64) / 3600, 2),
        "hours_for_101M_on_64_cores_fast": round(101_483_885 / (chain_rate["fast"] * 64) / 3600, 2),
        "agreement_captions": len(reference),
        **{f"agreement_with_posseg_{m}": round(sum(a == b for a, b in zip(outputs[m], reference)) / len(reference), 4)
           for m in ("tagger", "fast")},
        **{f"planted_name_recall_{m}": recall(outputs[m]) for m in ("tagger", "fast")},
        "planted_name_recall_posseg": recall(reference),
        "report_tagger": reports["tagger"].as_dict(),
        "report_fast": reports["fast"].as_dict(),
        "kept": kept["tagger"],
    }
    print(f"{'measure':45s} value")
    for key in ("count_pass_captions_per_s", "chain_tagger_captions_per_s_per_core", "chain_fast_captions_per_s_per_core",
                "chain_posseg_captions_per_s_per_core", "hours_for_101M_on_64_cores_tagger", "hours_for_101M_on_64_cores_fast",
                "agreement_with_posseg_tagger", "agreement_with_posseg_fast", "planted_name_recall_tagger",
                "planted_name_recall_fast", "planted_name_recall_posseg"):
        print(f"{key:45s} {result[key]}")
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "data_filters.json"), "w") as fh:
        json.dump(result, fh, indent=2, ensure_ascii=False)


if __name__ == "__main__":
    main()
