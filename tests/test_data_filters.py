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
