"""`wukong data prepare` -> a folder that load_dataset streams; `wukong data push` defaults to private."""

import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
    with pytest.raises(FileNotFoundError, match="shards folder .*nope' does not exist; pass the --out folder of `wukong data download`"):
        prepare_dataset_repo(tmp_path / "repo", shards_dir=tmp_path / "nope")
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


def test_cli_prepare_names_an_empty_pairs_folder(tmp_path, capsys):
    (tmp_path / "filtered").mkdir()
    assert main(["data", "prepare", "--out", str(tmp_path / "repo"), "--pairs", str(tmp_path / "filtered")]) == 2
    err = capsys.readouterr().err
    assert "no Parquet files at" in err and "pass the --out folder of `wukong data filter`" in err


def test_cli_prepare_and_report(tmp_path, capsys):
    write_shards(tmp_path / "shards")
    assert main(["data", "prepare", "--out", str(tmp_path / "repo"), "--shards", str(tmp_path / "shards")]) == 0
    assert main(["data", "report", str(tmp_path / "shards")]) == 0
    assert '"kept": 6' in capsys.readouterr().out
    assert main(["data", "report", str(tmp_path / "repo")]) == 2


class _ImageServer(BaseHTTPRequestHandler):
    """/good/N.jpg: a 320x240 JPEG; /garbage/N.jpg: 200 with HTML; anything else: 404."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/good/"):
            buf = io.BytesIO()
            Image.new("RGB", (320, 240), (len(self.path) * 9 % 256, 90, 30)).save(buf, format="JPEG")
            code, body = 200, buf.getvalue()
        elif self.path.startswith("/garbage/"):
            code, body = 200, b"<html>gone</html>"
        else:
            code, body = 404, b"not found"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(autouse=True)
def own_datasets_cache(tmp_path, monkeypatch):
    """datasets 5 keys the cache of a local folder by its name and card only (not its path or files),
    so two test folders both called "repo" would share cached tables."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets-cache"))


@pytest.fixture(scope="module")
def image_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ImageServer)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _download(server, out, shard_paths, captions_per_shard=3):
    """One downloader shard per entry of shard_paths ("good", "missing" or "garbage"), through `wukong data download`."""
    from wukong_hf.data.download import DownloadConfig, download_images

    rows = [{"url": f"{server}/{kind}/{s}-{i}.jpg", "caption": f"第{s}组第{i}张{kind}"}
            for s, kind in enumerate(shard_paths) for i in range(captions_per_shard)]
    return download_images(rows, out, DownloadConfig(shard_size=captions_per_shard, threads=4), progress=False)


@pytest.mark.parametrize("streaming", [False, True])
def test_failed_shard_is_left_out_and_the_rest_loads(image_server, tmp_path, streaming):
    """Regression (issue 15): a shard whose URLs all failed used to become a 0-row Parquet that
    load_dataset rejects with ArrowInvalid 'BatchSize must be greater than 0'."""
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    report = _download(image_server, tmp_path / "shards", ["good", "missing", "good", "garbage"])
    assert report.kept == 6 and report.failures["http_error"] == 3 and report.failures["not_an_image"] == 3
    info = prepare_dataset_repo(tmp_path / "repo", shards_dir=tmp_path / "shards")
    assert info["num_images"] == 6
    assert sorted(p.name for p in (tmp_path / "repo" / "images").iterdir()) == ["00000.parquet", "00002.parquet"]
    configs = DatasetCard.load(tmp_path / "repo" / "README.md").data.configs
    assert [c["config_name"] for c in configs] == ["images"]
    rows = list(load_dataset(str(tmp_path / "repo"), name="images", split="train", streaming=streaming))
    assert sorted(r["caption"] for r in rows) == sorted(f"第{s}组第{i}张good" for s in (0, 2) for i in range(3))
    assert all(r["image"].size == (320, 240) for r in rows)


@pytest.mark.parametrize("streaming", [False, True])
def test_training_data_path_reads_a_folder_with_a_failed_shard(image_server, tmp_path, streaming):
    from wukong_hf.training.config import DataSection
    from wukong_hf.training.loop import load_train_dataset

    _download(image_server, tmp_path / "shards", ["missing", "good"])
    prepare_dataset_repo(tmp_path / "repo", shards_dir=tmp_path / "shards")
    dataset = load_train_dataset(DataSection(dataset=str(tmp_path / "repo"), name="images", streaming=streaming))
    rows = list(dataset)
    assert len(rows) == 3 and all(r["image"].size == (320, 240) and r["caption"].endswith("good") for r in rows)


def test_every_shard_failed_is_a_clear_error(image_server, tmp_path):
    _download(image_server, tmp_path / "shards", ["missing", "garbage"])
    with pytest.raises(ValueError, match=r"no image in the 2 shard\(s\) of .* \(download report: 0 of 6 URLs kept; "
                                         r"http_error 3, not_an_image 3\)"):
        prepare_dataset_repo(tmp_path / "repo", shards_dir=tmp_path / "shards")
    assert not (tmp_path / "repo").exists()


def test_cli_prepare_every_shard_failed_says_why_in_one_line(image_server, tmp_path, capsys):
    _download(image_server, tmp_path / "shards", ["missing"])
    assert main(["data", "prepare", "--out", str(tmp_path / "repo"), "--shards", str(tmp_path / "shards")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("wukong data prepare: error: no image in the 1 shard(s) of") and "0 of 3 URLs kept; http_error 3" in err
    assert "rerun `wukong data download`" in err


def test_reprepare_removes_the_file_of_a_shard_that_is_now_empty(image_server, tmp_path):
    """A folder prepared when shard 00001 had images must not keep that file once the shard is empty."""
    _download(image_server, tmp_path / "shards", ["good", "good"])
    prepare_dataset_repo(tmp_path / "repo", shards_dir=tmp_path / "shards")
    assert (tmp_path / "repo" / "images" / "00001.parquet").is_file()
    _download(image_server, tmp_path / "failed", ["missing", "missing"])
    os.replace(tmp_path / "failed" / "00001.tar", tmp_path / "shards" / "00001.tar")
    assert prepare_dataset_repo(tmp_path / "repo", shards_dir=tmp_path / "shards")["num_images"] == 3
    assert sorted(p.name for p in (tmp_path / "repo" / "images").iterdir()) == ["00000.parquet"]


def test_empty_pairs_files_are_left_out_and_all_empty_is_an_error(tmp_path):
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    schema = pa.schema([("url", pa.string()), ("caption", pa.string())])
    pq.write_table(pa.Table.from_pylist([], schema=schema), tmp_path / "pairs-00000.parquet")
    pq.write_table(pa.Table.from_pylist([{"url": "http://x/1.jpg", "caption": "猫"}], schema=schema), tmp_path / "pairs-00001.parquet")
    empty, full = str(tmp_path / "pairs-00000.parquet"), str(tmp_path / "pairs-00001.parquet")
    with pytest.raises(ValueError, match=r"the 1 --pairs file\(s\) hold no rows \(the filter kept no caption"):
        prepare_dataset_repo(tmp_path / "repo", pairs=[empty])
    info = prepare_dataset_repo(tmp_path / "repo", pairs=[empty, full])
    assert info["num_pairs"] == 1 and [p.name for p in (tmp_path / "repo" / "pairs").iterdir()] == ["pairs-00000.parquet"]
    assert [c["config_name"] for c in DatasetCard.load(tmp_path / "repo" / "README.md").data.configs] == ["pairs"]
    assert [r["caption"] for r in load_dataset(str(tmp_path / "repo"), name="pairs", split="train")] == ["猫"]
