"""`wukong data prepare` -> a folder that load_dataset streams; `wukong data push` defaults to private."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from wukong_hf.cli import main
from wukong_hf.data.repository import LICENCE_WARNING, prepare_dataset_repo, push_dataset_repo


def write_shards(folder, n_shards=2, per_shard=3, size=(64, 48)):
    """Shards in the downloader's layout: NNNNN.tar (jpg, txt, json) + NNNNN_stats.json. Returns the captions."""
    folder.mkdir(parents=True, exist_ok=True)
    captions = []
    for shard in range(n_shards):
        with wds.TarWriter(str(folder / f"{shard:05d}.tar")) as writer:
            for i in range(per_shard):
                buf = io.BytesIO()
                Image.new("RGB", size, (shard * 80, i * 60, 100)).save(buf, format="JPEG")
                caption = f"第{shard}组第{i}张图片"
                captions.append(caption)
                writer.write({"__key__": f"{shard:05d}{i:04d}", "jpg": buf.getvalue(), "txt": caption, "json": {"url": "http://x"}})
        (folder / f"{shard:05d}_stats.json").write_text(json.dumps({"total": per_shard, "kept": per_shard, "failures": {}}))
    (folder / "download_report.json").write_text(json.dumps({"total": 6, "kept": 6, "success_rate": 1.0, "failures": {}}))
    return captions


@pytest.fixture
def prepared(tmp_path):
    captions = write_shards(tmp_path / "shards")
    pq.write_table(pa.table({"url": ["http://x/1.jpg", "http://x/2.jpg"], "caption": ["猫", "狗"],
                             "source_file": ["a.csv", "a.csv"], "source_row": [2, 3]}), tmp_path / "pairs-00000.parquet")
    info = prepare_dataset_repo(tmp_path / "repo", pairs=[str(tmp_path / "pairs-00000.parquet")], shards_dir=tmp_path / "shards")
    return tmp_path / "repo", captions, info


def test_load_dataset_streams_images_and_pairs(prepared):
    from datasets import load_dataset

    repo, captions, info = prepared
    assert info["num_images"] == 6 and info["num_pairs"] == 2 and sorted(info["configs"]) == ["images", "pairs"]
    images = load_dataset(str(repo), name="images", split="train", streaming=True)
    rows = list(images)
    assert sorted(r["caption"] for r in rows) == sorted(captions)
    assert isinstance(rows[0]["image"], Image.Image) and rows[0]["image"].size == (64, 48)
    assert rows[0]["url"] == "http://x" and len({r["key"] for r in rows}) == 6
    pairs = list(load_dataset(str(repo), name="pairs", split="train", streaming=True))
    assert [p["caption"] for p in pairs] == ["猫", "狗"]
    card = (repo / "README.md").read_text(encoding="utf-8")
    assert "license: cc-by-nc-sa-4.0" in card and "forbid redistributing" in card and "| 6 |" in card and "| 2 |" in card


def test_prepare_only_shards_keeps_one_default_config(tmp_path):
    from huggingface_hub import DatasetCard

    write_shards(tmp_path / "shards")
    prepare_dataset_repo(tmp_path / "repo", shards_dir=tmp_path / "shards")
    configs = DatasetCard.load(tmp_path / "repo" / "README.md").data.configs
    assert [c["config_name"] for c in configs] == ["images"] and configs[0]["default"] is True


def test_prepare_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="nothing to prepare"):
        prepare_dataset_repo(tmp_path / "repo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="run `wukong data download` first"):
        prepare_dataset_repo(tmp_path / "repo", shards_dir=tmp_path / "empty")
    pq.write_table(pa.table({"link": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="lacks url/caption columns"):
        prepare_dataset_repo(tmp_path / "repo", pairs=[str(tmp_path / "bad.parquet")])


class FakeApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))


def test_push_is_private_by_default_and_warns(prepared, capsys):
    repo, _, _ = prepared
    api = FakeApi()
    files = push_dataset_repo(repo, "me/wukong", api=api)
    assert "README.md" in files and "images/00000.parquet" in files
    assert api.calls[0] == ("create_repo", "me/wukong", {"repo_type": "dataset", "private": True, "exist_ok": True})
    assert api.calls[1][2]["repo_type"] == "dataset"
    assert LICENCE_WARNING in capsys.readouterr().err


def test_push_dry_run_cli_and_unsafe_files(prepared, capsys):
    repo, _, _ = prepared
    assert main(["data", "push", str(repo), "--repo-id", "me/wukong", "--dry-run", "--public"]) == 0
    err = capsys.readouterr().err
    assert "dry run: would upload" in err and "private=False" in err and "PUBLIC" in err
    (repo / "evil.pkl").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"refusing to upload .*evil.pkl"):
        push_dataset_repo(repo, "me/wukong", dry_run=True)


def test_cli_prepare_and_report(tmp_path, capsys):
    write_shards(tmp_path / "shards")
    assert main(["data", "prepare", "--out", str(tmp_path / "repo"), "--shards", str(tmp_path / "shards")]) == 0
    assert main(["data", "report", str(tmp_path / "shards")]) == 0
    assert '"kept": 6' in capsys.readouterr().out
    assert main(["data", "report", str(tmp_path / "repo")]) == 2
