"""The Space folder (`wukong space --export`, `wukong push --space`): Space metadata, pinned requirements, and
an app.py that starts the same app from the folder alone, importing only what requirements.txt installs."""

import ast
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest
from conftest import make_tiny, random_images
from huggingface_hub import SpaceCard
from packaging.requirements import Requirement

from wukong_hf.cli import main
from wukong_hf.space.export import push_space, write_space_folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    model, processor = make_tiny("tiny-token-wise")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _images(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(random_images(count, seed=7)):
        image.save(folder / f"{i}-红三角.png")
    (folder / "notes.txt").write_text("not copied")
    return folder


def test_export_writes_a_gradio_space_with_the_model_and_images(tmp_path, model_dir, capsys):
    images = _images(tmp_path / "images")
    out = tmp_path / "space"
    assert main(["space", "--model", str(model_dir), "--images", str(images), "--export", str(out)]) == 0
    assert f"wrote the Space folder {out}" in capsys.readouterr().out
    card = SpaceCard.load(out / "README.md")
    import gradio

    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert card.data.sdk_version == gradio.__version__
    assert card.data.python_version == f"{sys.version_info.major}.{sys.version_info.minor}"
    requirements = (out / "requirements.txt").read_text().split()
    assert f"gradio=={gradio.__version__}" in requirements and f"torch=={metadata.version('torch')}" in requirements
    assert all(re.fullmatch(r"[a-z-]+==[\w.+]+", line) for line in requirements)
    assert len((out / "prompts_zh.txt").read_text(encoding="utf-8").splitlines()) == 80
    assert sorted(p.name for p in (out / "images").iterdir()) == ["0-红三角.png", "1-红三角.png", "2-红三角.png"]
    assert (out / "model" / "model.safetensors").is_file() and (out / "wukong_hf" / "space" / "app.py").is_file()
    assert not list((out / "wukong_hf").rglob("__pycache__"))
    assert 'str(HERE / "model")' in (out / "app.py").read_text()


def test_export_refuses_a_non_empty_folder_and_bad_sources(tmp_path, model_dir):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty"):
        write_space_folder(tmp_path / "full", str(model_dir))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        write_space_folder(tmp_path / "a", str(model_dir), images=tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no such folder, and not a Hub id"):
        write_space_folder(tmp_path / "b", "no/such/model/folder")
    (tmp_path / "no-images").mkdir()
    with pytest.raises(ValueError, match="has no image files"):
        write_space_folder(tmp_path / "c", str(model_dir), images=tmp_path / "no-images")


def _requirement_closure(names: list[str]) -> set[str]:
    """The distributions pip installs for these requirement names (dependencies followed, extras not)."""
    def norm(name):
        return re.sub(r"[-_.]+", "-", name).lower()

    seen, queue = set(), [norm(n) for n in names]
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                queue.append(norm(requirement.name))
    return seen


def _imports(path: Path, nested: bool) -> set[str]:
    """Top-level names a file imports (absolute imports); nested=False leaves out imports inside functions."""
    found = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and not nested:
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name.split(".")[0] for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module != "__future__":
                found.add(child.module.split(".")[0])
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Runs app.py as `python app.py` does; once the page answers, writes which wukong_hf it imported.
_RUN_APP = r"""
import json, runpy, sys, threading, time, urllib.request
port = sys.argv[1]
def report():
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
            break
        except OSError:
            time.sleep(0.5)
    import wukong_hf
    modules = sorted(m for m in sys.modules if m == "wukong_hf" or m.startswith("wukong_hf."))
    with open("started.json", "w") as out:
        json.dump({"package": wukong_hf.__file__, "modules": modules}, out)
threading.Thread(target=report, daemon=True).start()
sys.argv = ["app.py"]
runpy.run_path("app.py", run_name="__main__")
"""


def test_exported_app_starts_from_its_folder_with_only_the_listed_requirements(tmp_path, model_dir):
    out = write_space_folder(tmp_path / "space", str(model_dir), images=_images(tmp_path / "images"))
    port = _free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1",
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": ""}
    app = subprocess.Popen([sys.executable, "-c", _RUN_APP, str(port)], cwd=out, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "started.json").is_file():
            assert app.poll() is None, f"app.py exited: {app.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "app.py did not answer within 240 s"
            time.sleep(0.5)
        config = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30).read())
    finally:
        app.terminate()
        app.wait(timeout=30)
    started = json.loads((out / "started.json").read_text())
    assert Path(started["package"]).resolve().parent == (out / "wukong_hf").resolve()  # the copy beside app.py
    labels = json.dumps(config, ensure_ascii=False)
    assert "Zero-shot 零样本分类" in labels and "Search 以文搜图" in labels and "Alignment 词-块对齐" in labels
    # Every third-party name the app's code imports comes from requirements.txt (or what those install):
    # module-level imports of every wukong_hf module it loaded, and all imports of app.py and the Space package.
    files = [(out / "app.py", True)]
    for module in started["modules"]:
        path = out / Path(*module.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        files.append((path, module.startswith("wukong_hf.space")))
    imported = set().union(*(_imports(path, nested) for path, nested in files)) - set(sys.stdlib_module_names)
    imported.discard("wukong_hf")
    installable = _requirement_closure([line.split("==")[0] for line in (out / "requirements.txt").read_text().split()])
    providers = metadata.packages_distributions()
    missing = {name for name in imported
               if not {re.sub(r"[-_.]+", "-", d).lower() for d in providers.get(name, [])} & installable}
    assert not missing, f"the app imports {missing}, which requirements.txt does not install"
    assert {"torch", "transformers", "gradio", "PIL"} <= imported  # the check saw the real imports


def test_push_dry_run_writes_the_space_next_to_the_model_export(tmp_path, model_dir, capsys):
    out = tmp_path / "export"
    images = _images(tmp_path / "images")
    assert main(["push", "--model", str(model_dir), "--repo-id", "me/tiny", "--space", "me/tiny-demo",
                 "--space-images", str(images), "--dry-run", str(out)]) == 0
    printed = capsys.readouterr().out
    space = tmp_path / "export-space"
    assert f"dry run: wrote the Space folder {space} (nothing uploaded)" in printed
    assert (out / "model.safetensors").is_file() and not (out / "app.py").exists()  # the model export is unchanged
    assert "'me/tiny'" in (space / "app.py").read_text() and not (space / "model").exists()
    assert SpaceCard.load(space / "README.md").data.models == ["me/tiny"]
    assert len(list((space / "images").iterdir())) == 3


def test_push_checks_the_space_arguments_before_exporting(tmp_path, model_dir, capsys):
    out = tmp_path / "export"
    assert main(["push", "--model", str(model_dir), "--repo-id", "me/tiny", "--space", "me/tiny-demo",
                 "--space-images", str(tmp_path / "absent"), "--dry-run", str(out)]) == 2
    assert "--space-images" in capsys.readouterr().err and not out.exists()
    assert main(["push", "--model", str(model_dir), "--repo-id", "me/tiny", "--space", "tiny-demo",
                 "--dry-run", str(out)]) == 2
    assert "must look like 'org/name'" in capsys.readouterr().err and not out.exists()


def test_push_space_creates_a_gradio_space_and_uploads_the_folder(tmp_path, monkeypatch):
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, **kwargs):
            calls["create"] = (repo_id, kwargs)

        def upload_folder(self, folder_path, repo_id, repo_type, commit_message):
            calls["upload"] = (repo_id, repo_type, sorted(p.name for p in Path(folder_path).iterdir()))
            return type("Commit", (), {"commit_url": f"https://huggingface.co/spaces/{repo_id}/commit/1"})()

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    url = push_space("me/tiny-demo", "me/tiny", token="t0ken")
    assert url == "https://huggingface.co/spaces/me/tiny-demo/commit/1"
    assert calls["create"] == ("me/tiny-demo", {"repo_type": "space", "space_sdk": "gradio", "private": False,
                                                "exist_ok": True})
    assert calls["upload"][:2] == ("me/tiny-demo", "space") and calls["token"] == "t0ken"
    assert {"app.py", "requirements.txt", "README.md", "wukong_hf", "prompts_zh.txt"} <= set(calls["upload"][2])
