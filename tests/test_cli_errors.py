"""Every expected failure of `wukong` ends in one line on stderr and exit status 2; --debug shows the
traceback; a bug keeps its traceback. Exceptions are the real ones of transformers / huggingface_hub /
PIL / datasets / safetensors: bad folders, bad repo ids, offline with nothing cached, Hub HTTP errors
from a local stand-in server (HF_ENDPOINT on 127.0.0.1), corrupt files, bad configs."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants
import pytest
from conftest import make_tiny, random_images

from wukong_hf.cli import main
from wukong_hf.model_folders import save_model_folder

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys, argv) -> tuple[int, str]:
    """(status, the last stderr line) of `wukong ARGV`, asserting nothing else was an error or a traceback."""
    status = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert sum(": error: " in line for line in lines) == 1, err
    return status, lines[-1]


@pytest.fixture
def image(tmp_path) -> str:
    path = tmp_path / "red.png"
    random_images(1)[0].save(path)
    return str(path)


@pytest.fixture
def model_folder(tmp_path) -> Path:
    model, processor = make_tiny("tiny-global")
    return save_model_folder(tmp_path / "model", model, processor)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Offline with an empty Hub cache (huggingface_hub reads HF_HUB_OFFLINE at import: patch the constant)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))


def test_missing_model_folder(capsys, image, tmp_path):
    status, line = _run(capsys, ["score", "--model", str(tmp_path / "nope"), "--images", image, "--captions", "猫"])
    assert status == 2
    assert line == (f"wukong score: error: model folder {tmp_path / 'nope'} does not exist; pass a folder written by "
                    "save_pretrained or a Hub id such as org/name.")


def test_folder_that_is_not_a_model_and_a_file_given_as_the_model(capsys, image, tmp_path):
    status, line = _run(capsys, ["score", "--model", str(tmp_path), "--images", image, "--captions", "猫"])
    assert status == 2 and line.startswith(f"wukong score: error: model folder {tmp_path} has no config.json: it is "
                                           "not a saved model; pass a folder written by save_pretrained")
    status, line = _run(capsys, ["score", "--model", image, "--images", image, "--captions", "猫"])
    assert status == 2
    assert line == f"wukong score: error: {image} is a file; pass the model folder that holds config.json, or a Hub id."


def test_malformed_repo_id(capsys, image, offline):
    status, line = _run(capsys, ["score", "--model", "bad id!", "--images", image, "--captions", "猫"])
    assert status == 2
    assert line == "wukong score: error: model bad id!: neither an existing local folder nor a Hub id of the form org/name"


def test_repo_id_offline_with_nothing_cached(capsys, image, offline):
    status, line = _run(capsys, ["score", "--model", "wukong-test/absent", "--images", image, "--captions", "猫"])
    assert status == 2
    assert line == ("wukong score: error: model wukong-test/absent: not in the local Hugging Face cache, and offline "
                    "mode (HF_HUB_OFFLINE=1) forbids downloading it: use a local folder, or unset HF_HUB_OFFLINE")


def test_upload_while_offline(capsys, model_folder, offline, tmp_path):
    status, line = _run(capsys, ["push", "--model", str(model_folder), "--repo-id", "org/x"])
    assert status == 2
    assert line == ("wukong push: error: upload to the Hub repository org/x: the Hub cannot be reached in offline mode "
                    "(HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE and try again")


def test_dataset_upload_while_offline(capsys, offline, tmp_path):
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "README.md").write_text("---\nlicense: cc-by-nc-sa-4.0\n---\n")
    status, line = _run(capsys, ["data", "push", str(tmp_path / "prepared"), "--repo-id", "org/x"])
    assert status == 2
    assert line == ("wukong data push: error: upload to the Hub dataset repository org/x: the Hub cannot be reached in "
                    "offline mode (HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE and try again")


def test_missing_corrupt_and_truncated_images(capsys, image, tmp_path):
    status, line = _run(capsys, ["score", "--images", str(tmp_path / "none.png"), "--captions", "猫"])
    assert status == 2
    assert line == f"wukong score: error: image file {tmp_path / 'none.png'} does not exist; pass existing PNG or JPEG files."
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 8)  # a PNG signature and nothing usable
    (tmp_path / "text.jpg").write_text("not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path(image).read_bytes()[:200])
    for bad in ("bad.png", "text.jpg", "truncated.png"):
        status, line = _run(capsys, ["score", "--images", image, str(tmp_path / bad), "--captions", "猫"])
        assert status == 2
        assert line.startswith(f"wukong score: error: cannot read {tmp_path / bad} as an image (")
        assert line.endswith("); pass a PNG or JPEG file.")


def test_corrupt_weights_and_bad_config_json(capsys, image, model_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(model_folder, broken)
    (broken / "model.safetensors").write_bytes(b"garbage" * 10)
    status, line = _run(capsys, ["score", "--model", str(broken), "--images", image, "--captions", "猫"])
    assert status == 2
    assert line.startswith(f"wukong score: error: model {broken}: corrupt or unreadable safetensors file (")

    (broken / "config.json").write_text("{not json")
    status, line = _run(capsys, ["score", "--model", str(broken), "--images", image, "--captions", "猫"])
    assert status == 2
    assert line == (f"wukong score: error: model {broken}: It looks like the config file at "
                    f"'{broken / 'config.json'}' is not a valid JSON file.")

    config = json.loads((model_folder / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "similarity": "bogus"}))
    status, line = _run(capsys, ["score", "--model", str(broken), "--images", image, "--captions", "猫"])
    assert status == 2 and line.startswith(f"wukong score: error: model {broken}: ") and "bogus" in line


def test_training_config_that_is_not_yaml(capsys, tmp_path):
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    status, line = _run(capsys, ["train", str(tmp_path / "bad.yaml")])
    assert status == 2
    assert line.startswith(f"wukong train: error: Training config {tmp_path / 'bad.yaml'} is not valid YAML")
    assert line.endswith("(expected ',' or ']', but got '<stream end>' at line 2, column 1)")


def test_train_py_uses_the_same_handler(capsys, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import train as train_script

    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    assert train_script.main([str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"train.py: error: Training config {tmp_path / 'bad.yaml'} is not valid YAML")


def test_missing_evaluation_dataset(capsys, tmp_path):
    status, line = _run(capsys, ["eval", "zero-shot", "--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert status == 2
    assert line == (f"wukong eval zero-shot: error: Dataset folder {tmp_path / 'nope'} does not exist; give a save_to_disk "
                    "folder, a dataset repository folder or a Hub id.")


def test_debug_shows_the_exception_instead(image, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["--debug", "score", "--model", str(tmp_path / "nope"), "--images", image, "--captions", "猫"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["score", "--debug", "--model", str(tmp_path / "nope"), "--images", image, "--captions", "猫"])


def test_a_bug_keeps_its_traceback(image, monkeypatch):
    import wukong_hf.caption_scoring

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(wukong_hf.caption_scoring, "score_captions", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["score", "--images", image, "--captions", "猫"])


def _wukong_command() -> list[str]:
    script = Path(sys.executable).with_name("wukong")  # the console script pip installed
    return [str(script)] if script.is_file() else [sys.executable, "-m", "wukong_hf.cli"]


def test_the_installed_command_prints_one_line_and_exits_2_or_the_traceback_with_debug(tmp_path, image):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    argv = ["score", "--model", str(tmp_path / "nope"), "--images", image, "--captions", "猫"]
    run = subprocess.run([*_wukong_command(), *argv], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == (f"wukong score: error: model folder {tmp_path / 'nope'} does not exist; pass a folder "
                          "written by save_pretrained or a Hub id such as org/name.\n")
    run = subprocess.run([*_wukong_command(), "--debug", *argv], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 1
    assert "Traceback (most recent call last)" in run.stderr
    assert "FileNotFoundError: model folder" in run.stderr


# ----- Hub HTTP errors, from a stand-in Hub on 127.0.0.1 ------------------------------------------
class _StandInHub(BaseHTTPRequestHandler):
    """Answers like the Hub: unknown repositories 404 (RepoNotFound); repository creation by name:
    'unauthorized' 401, 'forbidden' 403, 'busy' 500."""

    def _answer(self, status: int, error_code: str | None = None) -> None:
        body = json.dumps({"error": f"stand-in hub: {status}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Request-Id", "stand-in")
        if error_code:
            self.send_header("X-Error-Code", error_code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        payload = json.loads(self.rfile.read(length) or b"{}")
        status = {"unauthorized": 401, "forbidden": 403, "busy": 500}.get(payload.get("name"), 404)
        self._answer(status)

    def do_GET(self):
        self._answer(404, "RepoNotFound")

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


_DRIVER = r"""
import contextlib, io, json, sys
import huggingface_hub.constants
from wukong_hf.cli import main
results = []
for argv, endpoint in json.loads(sys.argv[1]):
    if endpoint:
        huggingface_hub.constants.ENDPOINT = endpoint  # HfApi reads it when created
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(argv)
    results.append([status, err.getvalue()])
print(json.dumps(results))
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hub_http_errors_and_an_unreachable_hub(tmp_path, image, model_folder):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandInHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        push = ["push", "--model", str(model_folder), "--repo-id"]
        calls = [
            [["score", "--model", "org/missing", "--images", image, "--captions", "猫"], None],
            [[*push, "org/unauthorized"], None],
            [[*push, "org/forbidden", "--token", "hf_stand_in"], None],
            [[*push, "org/busy"], None],
            [[*push, "org/any"], f"http://127.0.0.1:{_closed_port()}"],
        ]
        env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}", "HF_HUB_OFFLINE": "0",
               "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "5"}
        env.pop("HF_TOKEN", None)
        run = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(calls)], capture_output=True, text=True,
                             env=env, timeout=600)
    finally:
        server.shutdown()
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    lines = []
    for status, err in results:
        assert status == 2 and "Traceback" not in err, err
        lines.append(err.strip().splitlines()[-1])
    assert lines[0] == ("wukong score: error: model org/missing: no such local folder or Hub repository (a private one "
                        "needs `hf auth login` or HF_TOKEN)")
    assert lines[1] == ("wukong push: error: upload to the Hub repository org/unauthorized: the Hub refused the request "
                        "(401 Unauthorized): log in with `hf auth login` or set HF_TOKEN")
    assert lines[2] == ("wukong push: error: upload to the Hub repository org/forbidden: the Hub refused the request "
                        "(403 Forbidden): the token cannot write here; use a token with write access to this repository")
    assert lines[3] == ("wukong push: error: upload to the Hub repository org/busy: the Hub answered 500 (busy or "
                        "down): try again later")
    assert lines[4].startswith("wukong push: error: upload to the Hub repository org/any: cannot reach the Hugging Face "
                               "Hub (")
    assert lines[4].endswith("): check the network or HF_ENDPOINT")
