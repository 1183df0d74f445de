"""Caption filters: exact counts on a corpus built to known answers; bounded, mergeable caption counts."""

import json

import pytest

from wukong_hf.cli import main
from wukong_hf.data.caption_counts import count_caption_hashes, load_frequent_hashes, merge_caption_counts
from wukong_hf.data.text_filters import (
    NAME_TOKEN,
    CaptionFilter,
    FilterReport,
    TextFilterConfig,
    filter_captions,
    is_meaningless,
    load_sensitive_words,
    mask_names_posseg,
)

GOOD = ["一只可爱的小猫在草地上玩耍", "晴朗天空下的湖泊风景", "美味的红烧肉家常做法", "城市夜景灯光璀璨"]
MEANINGLESS = ["000.jpg", "IMG_2023.PNG", "https://example.com/a/b.html", "www.baidu.com", "123 456", "!!!...", "   "]
FREQUENT = "查看源网页"  # 11 copies -> dropped; a caption seen exactly 10 times is kept
TEN_TIMES = "展开全文后的精彩图片"
TOO_LONG = "我" + "和你" * 20  # 41 jieba words
SENSITIVE = ["这里有违禁词甲的图片", "包含违禁词乙"]
ENGLISH_ONLY = "a photo of a cat"  # no Chinese word


def corpus():
    rows = GOOD + MEANINGLESS + [FREQUENT] * 11 + [TEN_TIMES] * 10 + [TOO_LONG] + SENSITIVE + [ENGLISH_ONLY]
    return [{"url": f"http://x/{i}.jpg", "caption": c} for i, c in enumerate(rows)]


@pytest.fixture
def counts_dir(tmp_path):
    rows = corpus()
    # Two workers over two halves, merged: the split must not change the counts.
    count_caption_hashes((r["caption"] for r in rows[::2]), tmp_path, worker=0, num_partitions=4)
    count_caption_hashes((r["caption"] for r in rows[1::2]), tmp_path, worker=1, num_partitions=4)
    stats = merge_caption_counts(tmp_path, max_occurrences=10)
    assert stats["captions"] == len(rows) and stats["frequent_captions"] == 1 and stats["rows_in_frequent_captions"] == 11
    return tmp_path


def test_counts_are_exact_per_filter(counts_dir):
    report = FilterReport()
    config = TextFilterConfig(sensitive_words=["违禁词甲", "违禁词乙"])
    kept = list(filter_captions(corpus(), config, load_frequent_hashes(counts_dir), report))
    assert report.as_dict()["dropped"] == {
        "meaningless": 7, "sensitive_word": 2, "frequent_caption": 11, "too_few_words": 1, "too_many_words": 1,
    }
    assert report.kept == len(GOOD) + 10 and report.total == report.kept + sum(report.dropped.values())
    assert [r["caption"] for r in kept[: len(GOOD)]] == GOOD


def test_each_filter_switches_off(counts_dir):
    everything_off = TextFilterConfig(drop_meaningless=False, check_word_count=False, max_occurrences=None, mask_names=False)
    report = FilterReport()
    assert len(list(filter_captions(corpus(), everything_off, None, report))) == len(corpus())
    assert report.kept == len(corpus())
    report = FilterReport()
    list(filter_captions(corpus(), TextFilterConfig(max_occurrences=None), None, report))
    assert report.dropped["frequent_caption"] == 0 and report.dropped["sensitive_word"] == 0


def test_counts_rerun_of_a_worker_replaces_its_output(tmp_path):
    count_caption_hashes(["重复"] * 8, tmp_path, worker=0, num_partitions=2)
    count_caption_hashes(["重复"] * 8, tmp_path, worker=0, num_partitions=2)  # rerun, not a second worker
    assert merge_caption_counts(tmp_path, max_occurrences=10)["frequent_captions"] == 0


def test_names_masked_and_counted():
    caption_filter = CaptionFilter(TextFilterConfig(max_occurrences=None))
    caption, reason = caption_filter("刘德华和王小明在北京天安门广场合影")
    assert reason is None and caption == f"{NAME_TOKEN}和{NAME_TOKEN}在北京天安门广场合影"
    assert mask_names_posseg("刘德华和王小明在北京天安门广场合影") == caption
    report = FilterReport()
    list(filter_captions([{"caption": "张伟的照片"}, {"caption": "黄色的花朵"}], TextFilterConfig(max_occurrences=None), None, report))
    assert report.names_masked == 1 and report.kept == 2


# Everyday captions whose words jieba's dictionary tags nr (issue 15): 小狗, 高清, 三居室, 银杏树.
EVERYDAY = ["一只黄色的小狗", "高清壁纸下载", "简欧三居室装修效果图", "秋天的银杏树"]


@pytest.mark.parametrize("masker", ["tagger", "fast"])
def test_everyday_words_jieba_tags_as_names_stay_unmasked(masker):
    """Regression (issue 15): both maskers followed jieba's nr tags and turned these into "<人名>"."""
    caption_filter = CaptionFilter(TextFilterConfig(max_occurrences=None, name_masker=masker))
    for caption in EVERYDAY:
        assert caption_filter(caption) == (caption, None)
        assert NAME_TOKEN in mask_names_posseg(caption)  # the baseline (jieba.posseg alone) still does


NAMES = [
    ("新郎王建国与新娘的合影", f"新郎{NAME_TOKEN}与新娘的合影"),  # 3-character Han name
    ("李娜的婚纱照", f"{NAME_TOKEN}的婚纱照"),  # 2-character name in jieba's dictionary
    ("欧阳娜娜大提琴演奏照片", f"{NAME_TOKEN}大提琴演奏照片"),  # compound surname
    ("王老师的美术课堂", f"{NAME_TOKEN}老师的美术课堂"),  # the title stays
    ("孙建华先生捐赠的书画作品", f"{NAME_TOKEN}先生捐赠的书画作品"),
    ("泰勒·斯威夫特演唱会现场", f"{NAME_TOKEN}演唱会现场"),  # transliterated, one name
    ("周杰伦同款卫衣", f"{NAME_TOKEN}同款卫衣"),
    ("儿子豆豆的周岁照", f"儿子{NAME_TOKEN}的周岁照"),  # a nickname
    ("张伟家的简欧三居室", f"{NAME_TOKEN}家的简欧三居室"),  # a name next to other words
]
# Known misses (docs/data.md, "Limits"): 豆豆 is in none of the fast masker's tables; the tagger's classifier gives
# up a name before 家 (王家沙, 周家 are shops) for precision. strict: the test fails once they are found.
KNOWN_MISSES = {("fast", "儿子豆豆的周岁照"), ("tagger", "张伟家的简欧三居室")}


@pytest.mark.parametrize(
    "masker, caption, masked",
    [pytest.param(m, c, x, marks=[pytest.mark.xfail(strict=True, reason="known miss")] if (m, c) in KNOWN_MISSES else [])
     for m in ("tagger", "fast") for c, x in NAMES],
)
def test_person_names_are_masked(masker, caption, masked):
    assert CaptionFilter(TextFilterConfig(max_occurrences=None, name_masker=masker))(caption) == (masked, None)


def test_tagger_knows_what_the_rules_cannot():
    """The default (tagger) masker reads context: a brand named like a person stays (周大福 黄金手镯, jieba's
    dictionary and the fast masker say name), names outside the surname tables and nicknames are masked."""
    tagger = CaptionFilter(TextFilterConfig(max_occurrences=None))
    fast = CaptionFilter(TextFilterConfig(max_occurrences=None, name_masker="fast"))
    assert tagger("周大福黄金手镯") == ("周大福黄金手镯", None) and NAME_TOKEN in fast("周大福黄金手镯")[0]
    for caption in ("靳东新剧剧照", "儿子豆豆的周岁照"):
        assert NAME_TOKEN in tagger(caption)[0] and NAME_TOKEN not in fast(caption)[0]
    for brand in ("李宁运动鞋", "杨国福麻辣烫", "王守义十三香"):  # shops and brands named after people
        assert tagger(brand) == (brand, None) and NAME_TOKEN in mask_names_posseg(brand)
    assert tagger("董洁街拍") == (f"{NAME_TOKEN}街拍", None)  # the same shape with a person's context


def test_filter_batch_matches_one_at_a_time(counts_dir):
    """filter_batch (the tagger runs once per batch) gives each caption what __call__ gives it, in order,
    with drops mixed in."""
    captions = [r["caption"] for r in corpus()] + ["刘德华和王小明在北京天安门广场合影", "王老师的美术课堂", "周大福黄金手镯"]
    caption_filter = CaptionFilter(TextFilterConfig(sensitive_words=["违禁词甲"]), load_frequent_hashes(counts_dir))
    assert caption_filter.filter_batch(captions) == [caption_filter(c) for c in captions]
    rows = [{"caption": c, "i": i} for i, c in enumerate(captions)]
    small_batches = list(filter_captions(rows, caption_filter.config, caption_filter.frequent_hashes, batch_size=3))
    assert small_batches == list(filter_captions(rows, caption_filter.config, caption_filter.frequent_hashes))
    assert [r["i"] for r in small_batches] == sorted(r["i"] for r in small_batches)


def _labelled_captions():
    import json
    from pathlib import Path

    path = Path(__file__).parent / "data" / "name_masking_captions.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


TEST = ("heldout9", "heldout10")  # written blind before the classifier was frozen; scored once, never fitted on
# Measured once on the test splits (benchmarks/data_name_masking.py): precision 0.977, recall 0.705 (posseg 0.674);
# heldout9 0.980 / 0.739 (posseg 0.677), heldout10 0.975 / 0.677 (posseg 0.672).
TEST_PRECISION, TEST_RECALL = 0.97, 0.70
TEST_SPLIT_FLOORS = (("heldout9", 0.97, 0.73), ("heldout10", 0.97, 0.67))
TRAINING = ("dev", "heldout", "heldout2", "heldout3", "heldout4", "heldout5", "heldout6", "heldout7", "heldout8", "train9", "train10")


def test_name_masking_precision_and_recall_on_the_labelled_set():
    """Issue 15's target: precision >= 0.95 with recall no lower than jieba.posseg alone, here on the two test
    splits nobody fitted or tuned anything on. Numbers: benchmarks/data_name_masking.py, docs/data.md."""
    from wukong_hf.data.name_classifier import TEST_SPLITS
    from wukong_hf.data.text_filters import find_name_spans, name_masking_scores

    assert TEST_SPLITS == TEST
    examples = _labelled_captions()
    assert {e["split"] for e in examples} == set(TRAINING + TEST)
    test_examples = [e for e in examples if e["split"] in TEST]
    assert len(test_examples) >= 790 and sum(len(e["names"]) for e in test_examples) >= 400
    captions = [e["caption"] for e in examples]
    spans = {masker: dict(zip(captions, find_name_spans(captions, masker))) for masker in ("tagger", "fast", "posseg")}

    def scores(masker, splits):
        return name_masking_scores([e for e in examples if e["split"] in splits], spans[masker].__getitem__)

    tagger, posseg = scores("tagger", TEST), scores("posseg", TEST)
    assert tagger["precision"] >= TEST_PRECISION and tagger["recall"] >= TEST_RECALL, (tagger["false_positives"], tagger["missed"])
    assert tagger["precision"] >= 0.95 and tagger["recall"] >= posseg["recall"]  # the target itself
    assert posseg["precision"] < 0.6  # the baseline masks everyday words
    for split, min_precision, min_recall in TEST_SPLIT_FLOORS:
        tagger, posseg = scores("tagger", (split,)), scores("posseg", (split,))
        assert tagger["precision"] >= min_precision and tagger["recall"] >= min_recall, (split, tagger["false_positives"], tagger["missed"])
        assert tagger["precision"] >= 0.95 and tagger["recall"] >= posseg["recall"], split
    # The fast masker on captions it was never tuned on, as measured before the tagger.
    for split, min_precision, min_recall in (("heldout3", 0.83, 0.81), ("heldout4", 0.76, 0.59), ("heldout5", 0.82, 0.62),
                                             ("heldout6", 0.76, 0.55)):
        fast = scores("fast", (split,))
        assert fast["precision"] >= min_precision and fast["recall"] >= min_recall, split


def test_name_classifier_never_saw_the_test_splits():
    from wukong_hf.data.name_classifier import TEST_SPLITS, NameSpanClassifier

    metadata = NameSpanClassifier.from_file().metadata
    assert not set(metadata["training_splits"]) & set(TEST_SPLITS)
    assert metadata["training_captions"] == sum(e["split"] not in TEST_SPLITS for e in _labelled_captions())


def test_shipped_name_classifier_is_what_its_training_command_fits(tmp_path):
    """Refitting with `python -m wukong_hf.data.name_classifier` gives the shipped threshold and probabilities."""
    import torch

    from wukong_hf.data.name_classifier import NameSpanClassifier, analyse_captions, main

    main(["--out", str(tmp_path / "refit.safetensors")])
    shipped, refit = NameSpanClassifier.from_file(), NameSpanClassifier.from_file(tmp_path / "refit.safetensors")
    assert refit.threshold == shipped.threshold and refit.metadata == shipped.metadata
    described = [c for caption in analyse_captions([e["caption"] for e in _labelled_captions()[::7]]) for c in caption]
    inputs = [[f for _, f, _ in described], [v for _, _, v in described]]
    torch.testing.assert_close(refit.probabilities(refit.inputs(*inputs)), shipped.probabilities(shipped.inputs(*inputs)),
                               atol=1e-6, rtol=0)


def test_name_classifier_file_errors_say_what_to_do(tmp_path, capsys):
    from wukong_hf.data.name_classifier import NameSpanClassifier

    with pytest.raises(FileNotFoundError, match="does not exist; refit it with .*--name-masker fast"):
        NameSpanClassifier.from_file(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="is not a name-span classifier file"):
        NameSpanClassifier.from_file(tmp_path / "bad.safetensors")
    from wukong_hf.data.name_classifier import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--labelled", str(tmp_path / "missing.jsonl")])
    assert exit_info.value.code == 2 and "no labelled captions at" in capsys.readouterr().err
    shipped = NameSpanClassifier.from_file()
    with pytest.raises(ValueError, match="fitted on other features"):
        shipped.inputs([{"span_probability": 1.0}], [shipped.tensors["projection_mean"]])


def test_name_masking_scores_definition():
    from wukong_hf.data.text_filters import name_masking_scores

    examples = [{"caption": "王老师和小狗", "names": ["王"]}, {"caption": "高清壁纸", "names": []}]
    perfect = name_masking_scores(examples, lambda c: [(0, 1)] if c.startswith("王") else [])
    assert (perfect["precision"], perfect["recall"]) == (1.0, 1.0)
    whole_token = name_masking_scores(examples, lambda c: [(0, 3)] if c.startswith("王") else [(0, 2)])
    assert (whole_token["precision"], whole_token["recall"]) == (0.0, 1.0)  # 王老师 and 高清 are not names
    with pytest.raises(ValueError, match="labelled name '李' is not in caption"):
        name_masking_scores([{"caption": "王老师", "names": ["李"]}], lambda c: [])


def test_meaningless_rules():
    assert all(is_meaningless(c) for c in MEANINGLESS)
    assert not any(is_meaningless(c) for c in GOOD + ["iPhone 15 开箱"])


def test_bad_inputs_have_clear_messages(tmp_path):
    with pytest.raises(ValueError, match="run `wukong data count-captions`"):
        CaptionFilter(TextFilterConfig())
    with pytest.raises(ValueError, match="name_masker must be one of 'tagger', 'fast', 'posseg', got 'hmm'"):
        TextFilterConfig(name_masker="hmm")
    with pytest.raises(FileNotFoundError, match="sensitive-word list .* does not exist"):
        load_sensitive_words(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no words"):
        load_sensitive_words(tmp_path / "empty.txt")
    (tmp_path / "gbk.txt").write_bytes("违禁".encode("gbk"))
    with pytest.raises(ValueError, match="is not UTF-8"):
        load_sensitive_words(tmp_path / "gbk.txt")
    with pytest.raises(FileNotFoundError, match="run merge_caption_counts"):
        load_frequent_hashes(tmp_path)


def test_cli_count_merge_filter(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(corpus()), tmp_path / "table.parquet")
    (tmp_path / "words.txt").write_text("违禁词甲\n违禁词乙\n", encoding="utf-8")
    counts, out = str(tmp_path / "counts"), str(tmp_path / "filtered")
    assert main(["data", "count-captions", str(tmp_path / "table.parquet"), "--out", counts]) == 0
    assert main(["data", "count-captions", "--out", counts, "--merge"]) == 0
    assert main(["data", "filter", str(tmp_path / "table.parquet"), "--out", out, "--counts", counts,
                 "--sensitive-words", str(tmp_path / "words.txt")]) == 0
    report = json.loads((tmp_path / "filtered" / "filter_report.json").read_text())
    assert report["kept"] == len(GOOD) + 10 and report["dropped"]["frequent_caption"] == 11
    assert pq.read_table(tmp_path / "filtered" / "pairs-00000.parquet").num_rows == report["kept"]
    assert main(["data", "filter", str(tmp_path / "table.parquet"), "--out", out]) == 2
    assert "count-captions" in capsys.readouterr().err


def test_lac_reproduces_jiebas_paddle_mode():
    """The torch port of jieba's bundled LAC model segments jieba's documented paddle-mode examples as jieba's
    README prints them (Paddle Mode: 我/来到/北京清华大学, 乒乓球/拍卖/完/了, 中国科学技术大学)."""
    from wukong_hf.data.name_tagger import LacTagger

    tagger = LacTagger()
    documented = {"我来到北京清华大学": "我/来到/北京清华大学", "乒乓球拍卖完了": "乒乓球/拍卖/完/了", "中国科学技术大学": "中国科学技术大学"}
    for sentence, segmented in documented.items():
        assert "/".join(word for word, _ in tagger.words(sentence)) == segmented
    assert tagger.words("刘德华和王小明在北京天安门广场合影")[:3] == [("刘德华", "PER"), ("和", "c"), ("王小明", "PER")]


def test_lac_batches_give_the_same_labels_as_single_captions():
    """Padding and the per-row reversal of the backward GRU must not leak between captions of other lengths."""
    import torch

    from wukong_hf.data.name_tagger import LacTagger

    captions = ["王芳", "", "刘德华和王小明在北京天安门广场合影", "周杰伦同款卫衣", "a", "高清壁纸下载" * 5]
    tagger, threads = LacTagger(batch_size=4), torch.get_num_threads()
    assert tagger.labels(captions) == [tagger.labels([c])[0] for c in captions]
    assert [len(labels) for labels in tagger.labels(captions)] == [len(c) for c in captions]
    assert torch.get_num_threads() == threads  # one thread inside, the caller's setting restored


def test_lac_model_errors_say_what_to_do(tmp_path):
    from wukong_hf.data.name_tagger import LacTagger, lac_model_dir, read_fluid_tensor

    with pytest.raises(FileNotFoundError, match="ships with jieba 0.42.*--name-masker fast"):
        LacTagger(model_dir=str(tmp_path))
    weights = open(f"{lac_model_dir()}/model_baseline/fc_4.b_0", "rb").read()
    (tmp_path / "truncated").write_bytes(weights[:-8])
    with pytest.raises(ValueError, match="truncated .* reinstall jieba"):
        read_fluid_tensor(str(tmp_path / "truncated"))
