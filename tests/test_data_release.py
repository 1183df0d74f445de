"""Release reader: quoted newlines, broken rows, non-UTF-8 bytes, Parquet mirror, datasets stream, CLI."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wukong_hf.cli import main
from wukong_hf.data.release import ReadReport, expand_release_paths, iter_release_rows, release_stream


def write_release_csv(path):
    """A CSV in the release's shape with known answers: 5 good rows, 4 broken rows."""
    lines = [
        b"url,caption\n",
        "http://a.example/1.jpg,一只猫在草地上\n".encode(),  # good (line 2)
        '"http://a.example/2.jpg","第一行\n第二行"\n'.encode(),  # good, quoted newline (lines 3-4)
        "http://a.example/3.jpg,多,了,字段\n".encode(),  # broken: 4 fields (line 5)
        ",没有网址\n".encode(),  # broken: empty url (line 6)
        "http://a.example/4.jpg,\n".encode(),  # broken: empty caption (line 7)
        "http://a.example/5.jpg,".encode() + "中文标题".encode("gbk") + b"\n",  # good, GBK bytes (line 8)
        'http://a.example/6.jpg,"未结束的引号\n'.encode(),  # broken: unterminated quote (line 9)
        'http://a.example/7.jpg,"带""引号""的标题"\n'.encode(),  # good, escaped quotes (line 10)
        "http://a.example/8.jpg,最后一行".encode(),  # good, no final newline (line 11)
    ]
    path.write_bytes(b"".join(lines))
    return path


def test_csv_rows_and_broken_counts(tmp_path):
    path = write_release_csv(tmp_path / "wukong_100m_0.csv")
    report = ReadReport()
    rows = list(iter_release_rows(path, report))
    assert [r["caption"] for r in rows] == ["一只猫在草地上", "第一行\n第二行", "中文标题", '带"引号"的标题', "最后一行"]
    assert [r["source_row"] for r in rows] == [2, 3, 8, 10, 11]
    assert {r["source_file"] for r in rows} == {"wukong_100m_0.csv"}
    assert report.rows == 5
    assert dict(report.broken) == {"wrong_field_count": 1, "empty_url": 1, "empty_caption": 1, "unbalanced_quote": 1}
    assert report.non_utf8_rows == 1
    assert "wukong_100m_0.csv:9: unbalanced_quote" in report.examples


def test_parquet_mirror_and_nulls(tmp_path):
    table = pa.table({"url": ["http://b/1.jpg", None, "http://b/3.jpg"], "caption": ["狗", "猫", None]})
    pq.write_table(table, tmp_path / "mirror-00000.parquet")
    report = ReadReport()
    rows = list(iter_release_rows(tmp_path, report))
    assert rows == [{"url": "http://b/1.jpg", "caption": "狗", "source_file": "mirror-00000.parquet", "source_row": 1}]
    assert dict(report.broken) == {"empty_url": 1, "empty_caption": 1}


def test_parquet_missing_columns_message(tmp_path):
    pq.write_table(pa.table({"link": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['caption', 'url'\]"):
        list(iter_release_rows(tmp_path / "bad.parquet"))


def test_missing_paths_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        expand_release_paths(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="no .csv or .parquet files"):
        expand_release_paths(tmp_path)
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(ValueError, match="neither .csv nor .parquet"):
        expand_release_paths(tmp_path / "x.txt")


def test_release_stream_is_a_sharded_datasets_stream(tmp_path):
    write_release_csv(tmp_path / "wukong_100m_0.csv")
    write_release_csv(tmp_path / "wukong_100m_1.csv")
    ds = release_stream(tmp_path)
    assert ds.num_shards == 2
    rows = list(ds)
    assert len(rows) == 10 and set(rows[0]) == {"url", "caption", "source_file", "source_row"}
    from datasets.distributed import split_dataset_by_node

    halves = [list(split_dataset_by_node(ds, rank=r, world_size=2)) for r in range(2)]
    assert {h[0]["source_file"] for h in halves} == {"wukong_100m_0.csv", "wukong_100m_1.csv"}
    assert sum(len(h) for h in halves) == 10


def test_cli_read_writes_table_and_report(tmp_path, capsys):
    write_release_csv(tmp_path / "wukong_100m_0.csv")
    assert main(["data", "read", str(tmp_path / "wukong_100m_0.csv"), "--out", str(tmp_path / "table")]) == 0
    report = json.loads((tmp_path / "table" / "read_report.json").read_text())
    assert report["rows_read"] == 5 and report["rows_broken"] == 4
    table = pq.read_table(tmp_path / "table" / "pairs-00000.parquet")
    assert table.column_names == ["url", "caption", "source_file", "source_row"] and table.num_rows == 5
    # The provenance survives a second read of the written table.
    assert [r["source_row"] for r in iter_release_rows(tmp_path / "table" / "pairs-00000.parquet")] == [2, 3, 8, 10, 11]


def test_unterminated_quote_loses_only_its_own_line(tmp_path):
    lines = ["url,caption\n", 'http://a/0.jpg,"从不结束\n'] + [f"http://a/{i}.jpg,标题{i}\n" for i in range(1, 40)]
    (tmp_path / "w.csv").write_text("".join(lines), encoding="utf-8")
    report = ReadReport()
    rows = list(iter_release_rows(tmp_path / "w.csv", report))
    assert [r["caption"] for r in rows] == [f"标题{i}" for i in range(1, 40)]
    assert dict(report.broken) == {"unbalanced_quote": 1}
