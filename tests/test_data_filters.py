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


def test_everyday_words_jieba_tags_as_names_stay_unmasked():
    """Regression (issue 15): both maskers followed jieba's nr tags and turned these into "<人名>"."""
    caption_filter = CaptionFilter(TextFilterConfig(max_occurrences=None))
    for caption in EVERYDAY:
        assert caption_filter(caption) == (caption, None)
        assert NAME_TOKEN in mask_names_posseg(caption)  # the baseline (jieba.posseg alone) still does


@pytest.mark.parametrize(
    "caption, masked",
    [
        ("新郎王建国与新娘的合影", f"新郎{NAME_TOKEN}与新娘的合影"),  # 3-character Han name
        ("李娜的婚纱照", f"{NAME_TOKEN}的婚纱照"),  # 2-character name in jieba's dictionary
        ("欧阳娜娜大提琴演奏照片", f"{NAME_TOKEN}大提琴演奏照片"),  # compound surname
        ("王老师的美术课堂", f"{NAME_TOKEN}老师的美术课堂"),  # the title stays
        ("孙建华先生捐赠的书画作品", f"{NAME_TOKEN}先生捐赠的书画作品"),
        ("泰勒·斯威夫特演唱会现场", f"{NAME_TOKEN}演唱会现场"),  # transliterated, one name
        ("周杰伦同款卫衣", f"{NAME_TOKEN}同款卫衣"),
        ("张伟家的简欧三居室", f"{NAME_TOKEN}家的简欧三居室"),  # a name next to other words
    ],
)
def test_person_names_are_masked(caption, masked):
    assert CaptionFilter(TextFilterConfig(max_occurrences=None))(caption) == (masked, None)


def _labelled_captions():
    import json
    from pathlib import Path

    path = Path(__file__).parent / "data" / "name_masking_captions.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_name_masking_precision_and_recall_on_the_labelled_set():
    """Precision >= 0.95 with recall no lower than jieba.posseg alone on the captions the rules were tuned
    on; on heldout3 (written before the last tuning round, never tuned on) the measured level is kept:
    precision 0.84 (posseg 0.54). Numbers: benchmarks/data_name_masking.py."""
    from wukong_hf.data.text_filters import name_masking_scores, name_spans

    examples = _labelled_captions()
    assert len(examples) >= 300 and sum(len(e["names"]) for e in examples) >= 100
    tuned = [e for e in examples if e["split"] != "heldout3"]
    heldout = [e for e in examples if e["split"] == "heldout3"]
    for rows, min_precision in ((tuned, 0.95), (heldout, 0.80), (examples, 0.94)):
        fast = name_masking_scores(rows, name_spans)
        posseg = name_masking_scores(rows, lambda caption: name_spans(caption, "posseg"))
        assert fast["precision"] >= min_precision, fast["false_positives"]
        assert posseg["precision"] < 0.7  # the baseline masks everyday words
        if rows is not heldout:
            assert fast["recall"] >= posseg["recall"], fast["missed"]
    assert name_masking_scores(heldout, name_spans)["recall"] >= 0.80


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
    with pytest.raises(ValueError, match="name_masker must be 'fast' or 'posseg'"):
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
