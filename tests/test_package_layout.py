"""What `import wukong_hf` loads, its version, and what a built wheel holds (the package-dir remaps of
modeling/, model_cards/, dataset_scripts/wukong/ and metrics/)."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_IMPORT_REPORT = r"""
import json, sys
before = set(sys.modules)
{setup}
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _modules_loaded_by(setup: str) -> set[str]:
    run = subprocess.run([sys.executable, "-c", _IMPORT_REPORT.format(setup=setup)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    return set(json.loads(run.stdout.strip().splitlines()[-1]))


def test_import_wukong_hf_loads_the_model_code_only():
    loaded = _modules_loaded_by("import wukong_hf")
    ours = {m for m in loaded if m.startswith("wukong_hf")}
    assert ours == {"wukong_hf", "wukong_hf.configuration_wukong", "wukong_hf.modeling_wukong", "wukong_hf.features",
                    "wukong_hf.processing_wukong", "wukong_hf.image_processing_wukong", "wukong_hf.losses",
                    "wukong_hf.similarity", "wukong_hf.presets", "wukong_hf.text_feature_memo"}
    for heavy in ("datasets", "evaluate", "jieba", "webdataset", "pyarrow", "tensorboard"):
        assert heavy not in loaded, heavy
    # transformers' PreTrainedModel imports accelerate itself when it is installed; wukong_hf adds none of it.
    by_transformers = _modules_loaded_by("import transformers.modeling_utils")
    assert {m for m in loaded if m.startswith("accelerate")} <= by_transformers


def test_lazy_public_names_resolve_on_first_use():
    import wukong_hf
    from wukong_hf.evaluation.retrieval import evaluate_retrieval
    from wukong_hf.hub import push_model
    from wukong_hf.model_folders import load_model_and_processor

    assert wukong_hf.evaluate_retrieval is evaluate_retrieval and wukong_hf.push_model is push_model
    assert wukong_hf.load_model_and_processor is load_model_and_processor
    assert set(wukong_hf.__all__) <= set(dir(wukong_hf))
    assert all(getattr(wukong_hf, name) is not None for name in wukong_hf.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        wukong_hf.nope


def test_version_is_the_installed_distributions():
    import wukong_hf

    assert wukong_hf.__version__ == version("wukong-hf")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy, so the build's build/ and egg-info stay out of the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("src", "modeling", "model_cards", "dataset_scripts", "metrics"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                          "--no-index", "-q", "-w", str(tmp / "dist")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (found,) = (tmp / "dist").glob("wukong_hf-*.whl")
    return found


def test_wheel_holds_code_presets_card_templates_vocabulary_and_the_command(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    code = {str(p.relative_to(ROOT / "src")) for p in (ROOT / "src" / "wukong_hf").rglob("*.py")}
    assert code <= names, sorted(code - names)
    assert {f"wukong_hf/preset_files/{p.name}" for p in (ROOT / "modeling").glob("*.json")} <= names
    templates = {p.name for p in (ROOT / "model_cards").glob("*.md")} - {"README.md"}
    assert {f"wukong_hf/model_card_templates/{n}" for n in templates} <= names
    assert "wukong_hf/model_card_templates/README.md" not in names  # the folder's description, not a template
    assert "wukong_hf/dataset_card_templates/README.md" in names and "wukong_hf/resources/vocab.txt" in names
    metric_files = {str(p.relative_to(ROOT / "metrics")) for p in (ROOT / "metrics").glob("*/*") if p.is_file()}
    assert {f"wukong_hf/metric_modules/{f}" for f in metric_files} <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "wukong = wukong_hf.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


_INSTALLED_CHECK = r"""
import json, sys
import wukong_hf
from wukong_hf.data.repository import CARD_TEMPLATE
from wukong_hf.hub import build_model_card
card = build_model_card("org/x", "wukong-vit-b-32-global")
print(json.dumps({"file": wukong_hf.__file__, "presets": len(wukong_hf.list_presets()),
                  "card": "ImageNet-CN" in str(card), "dataset_card": CARD_TEMPLATE.is_file()}))
"""


def test_installed_wheel_finds_its_presets_and_templates(wheel, tmp_path):
    target = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                          str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", _INSTALLED_CHECK], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(target))  # the wheel's copy, not the checkout
    assert out["presets"] == len(list((ROOT / "modeling").glob("*.json")))
    assert out["card"] and out["dataset_card"]
