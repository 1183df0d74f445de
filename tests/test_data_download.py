"""Downloader against a 127.0.0.1 server: every failure reason, accounting, resume after SIGKILL."""

import io
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from wukong_hf.data.download import FAILURE_REASONS, DownloadConfig, download_images


def encode(size, fmt, colour=(200, 30, 30)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def png_bomb(width=100_000, height=100_000):
    """A valid PNG header claiming 10^10 pixels with a tiny body."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


BODIES = {
    "/good.jpg": encode((640, 480), "JPEG"),
    "/good.png": encode((300, 400), "PNG"),
    "/good.webp": encode((900, 350), "WEBP"),  # ratio 2.57: kept
    "/small.jpg": encode((150, 300), "JPEG"),  # a side <= 200
    "/edge.jpg": encode((200, 500), "JPEG"),  # exactly 200: the paper wants > 200
    "/wide.jpg": encode((700, 210), "JPEG"),  # ratio 3.33
    "/html": b"<html><body>not found</body></html>",
    "/bomb.png": png_bomb(),
    "/cut.jpg": encode((640, 480), "JPEG")[:600],  # complete response, broken JPEG data
    "/big.jpg": encode((640, 480), "JPEG") + b"\0" * 300_000,
}
EXPECTED = {
    "/good.jpg": "success", "/good.png": "success", "/good.webp": "success", "/redirect": "success",
    "/small.jpg": "too_small", "/edge.jpg": "too_small", "/wide.jpg": "bad_aspect_ratio", "/html": "not_an_image",
    "/bomb.png": "decompression_bomb", "/cut.jpg": "decode_error", "/big.jpg": "too_large",
    "/404": "http_error", "/500": "http_error", "/truncated": "truncated", "/slow": "timeout",
    "/redirect-ftp": "unsupported_scheme",
}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.path.split("?")[0]
        if path.startswith("/delay/"):
            time.sleep(0.15)
            path = path[len("/delay"):]
        if path in BODIES:
            self._send(200, BODIES[path])
        elif path in ("/404", "/500"):
            self._send(int(path[1:]), b"error")
        elif path == "/truncated":
            body = BODIES["/good.jpg"]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
        elif path == "/slow":
            time.sleep(2.0)
            self._send(200, BODIES["/good.jpg"])
        elif path == "/redirect":
            self._redirect("/good.jpg")
        elif path == "/redirect-ftp":
            self._redirect("ftp://127.0.0.1/good.jpg")
        else:
            self._send(404, b"")

    def _send(self, code, body):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, where):
        self.send_response(302)
        self.send_header("Location", where)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def read_tar_keys(folder):
    samples = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(folder, name)) as tar:
                samples += [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".txt")]
    return samples


def test_every_url_accounted_for(server, tmp_path):
    rows = [{"url": server + path, "caption": f"标题{i}", "source_file": "t.csv", "source_row": i}
            for i, path in enumerate(EXPECTED)]
    rows.append({"url": "file:///etc/passwd", "caption": "本地文件", "source_file": "t.csv", "source_row": 99})
    config = DownloadConfig(timeout=0.8, max_bytes=200_000, max_pixels=50_000_000, shard_size=7, threads=8)
    report = download_images(rows, tmp_path, config, progress=False)
    assert report.total == len(rows) == report.kept + sum(report.failures.values())
    assert report.kept == 4
    assert set(report.failures) <= set(FAILURE_REASONS)
    statuses = pq.read_table(tmp_path / "00000.parquet").to_pylist() + pq.read_table(tmp_path / "00001.parquet").to_pylist() \
        + pq.read_table(tmp_path / "00002.parquet").to_pylist()
    got = {r["url"].replace(server, ""): r["status"] for r in statuses}
    assert got == {**EXPECTED, "file:///etc/passwd": "unsupported_scheme"}
    assert json.loads((tmp_path / "download_report.json").read_text())["failures"]["http_error"] == 2
    # Kept samples: resized so the short side is 256 (never upscaled), caption and metadata alongside.
    with tarfile.open(tmp_path / "00000.tar") as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile([n for n in names if n.endswith(".json")][0]).read())
        image = Image.open(io.BytesIO(tar.extractfile([n for n in names if n.endswith(".jpg")][0]).read()))
    assert meta["original_width"] == 640 and min(image.size) == 256 and meta["source_file"] == "t.csv"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_resume_after_sigkill_gives_same_samples(server, tmp_path):
    rows = [{"url": f"{server}/delay/good.jpg?n={i}", "caption": f"第{i}张图片"} for i in range(24)]
    table = tmp_path / "table.parquet"
    pq.write_table(pa.Table.from_pylist(rows), table)
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    command = [sys.executable, "-m", "wukong_hf.cli", "data", "download", str(table), "--out", str(killed),
               "--shard-size", "3", "--threads", "1", "--processes", "1"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len([p for p in os.listdir(killed) if p.endswith("_stats.json")] if killed.exists() else []) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [p for p in os.listdir(killed) if p.endswith("_stats.json")]
    assert 2 <= len(done) < 8, "the kill must land midway"
    from wukong_hf.data.release import iter_release_rows

    config = DownloadConfig(shard_size=3, threads=8)
    resumed = download_images(iter_release_rows(table), killed, config, progress=False)
    assert resumed.shards_skipped == len(done) and resumed.kept == resumed.total == 24
    download_images(iter_release_rows(table), reference, config, progress=False)
    got, want = read_tar_keys(killed), read_tar_keys(reference)
    assert len(got) == 24 and len({k for k, _ in got}) == 24
    assert got == want
    assert not [p for p in os.listdir(killed) if p.endswith(".tmp")]


def test_resume_with_other_shard_size_is_refused(server, tmp_path):
    rows = [{"url": f"{server}/good.jpg?n={i}", "caption": "图"} for i in range(4)]
    download_images(rows, tmp_path, DownloadConfig(shard_size=4), progress=False)
    with pytest.raises(ValueError, match="resume with the same input and --shard-size"):
        download_images(rows, tmp_path, DownloadConfig(shard_size=2), progress=False)


def test_two_processes_match_one(server, tmp_path):
    rows = [{"url": f"{server}/good.png?n={i}", "caption": f"图{i}"} for i in range(12)]
    one = download_images(rows, tmp_path / "one", DownloadConfig(shard_size=3), progress=False)
    two = download_images(rows, tmp_path / "two", DownloadConfig(shard_size=3, processes=2), progress=False)
    assert one.as_dict()["failures"] == two.as_dict()["failures"] and two.kept == 12
    assert read_tar_keys(tmp_path / "one") == read_tar_keys(tmp_path / "two")


def test_bad_config_messages():
    with pytest.raises(ValueError, match="must all be >= 1"):
        DownloadConfig(threads=0)
    with pytest.raises(ValueError, match="must be positive"):
        DownloadConfig(timeout=0)
