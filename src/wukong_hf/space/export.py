"""The Space folder: what a Hugging Face Space (Gradio SDK) needs to run the same app as `wukong space`.

    out/
      README.md          Space metadata (sdk gradio, sdk_version, app_file, python_version, models, ...)
      app.py             loads the model and starts wukong_hf.space.app
      requirements.txt   exact versions of what the app imports (those of the exporting machine)
      wukong_hf/         this package's code (wukong-hf is not on PyPI; app.py imports the copy beside it)
      prompts_zh.txt     the 80 Chinese prompt templates (so the Space needs no clip-benchmark)
      model/             a local --model, saved with save_pretrained (a Hub id is loaded from the Hub instead)
      images/            the search folder's image files, when given

`wukong space --export DIR` writes it; `wukong push --space ORG/NAME` writes and uploads it next to
the model (the Space then loads the model by its Hub id).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from ..evaluation.image_sources import IMAGE_EXTENSIONS, image_files

__all__ = ["SPACE_REQUIREMENTS", "write_space_folder", "push_space", "check_space_request", "space_requirements"]

# The distributions the app imports (wukong-hf's own dependencies plus gradio), pinned at export.
SPACE_REQUIREMENTS = (
    "gradio", "torch", "torchvision", "transformers", "huggingface-hub", "timm", "safetensors", "tokenizers",
    "pillow", "numpy", "tqdm", "pyyaml",
)

_APP = '''"""Wukong Space: zero-shot classification, Chinese text-to-image search and word-patch alignment
(paper Figure 4) for {model_name}.

Written by wukong-hf (`wukong space --export`, `wukong push --space`): the same app as
`wukong space`. Run it anywhere: pip install -r requirements.txt && python app.py
"""

import os
from pathlib import Path

from wukong_hf.space.app import build_app, launch_options
from wukong_hf.space.handlers import load_session

HERE = Path(__file__).resolve().parent
MODEL = os.environ.get("WUKONG_SPACE_MODEL") or {model_expr}
IMAGES = HERE / "images"
TEMPLATES = HERE / "prompts_zh.txt"

session = load_session(
    MODEL,
    images=IMAGES if IMAGES.is_dir() else None,
    templates=TEMPLATES if TEMPLATES.is_file() else "imagenet1k",
)
demo = build_app(session)

if __name__ == "__main__":
    demo.launch(**launch_options(session))
'''

_BODY = """
# {title}

A Gradio Space for the Wukong model **{model_name}** (Gu et al. 2022, Chinese CLIP/FILIP dual encoders),
written by wukong-hf ([paper](https://arxiv.org/abs/2202.06767)):

- **Zero-shot 零样本分类**: an image and Chinese labels (comma-separated), one prompt or the 80-prompt
  ensemble; a bar per label.
- **Search 以文搜图**: a Chinese query against {images_line}; token-wise models re-rank a global shortlist.
- **Alignment 词-块对齐**: an image and a label; each image patch coloured by the label token it matches best
  (paper Figure 4). Needs a token-wise model without token reduction.

Run it locally: `pip install -r requirements.txt && python app.py` (set `WUKONG_SPACE_MODEL` to load
another model). The 80 prompt templates in `prompts_zh.txt` are clip-benchmark's Chinese ImageNet
templates (MIT licence).
"""


def space_requirements() -> list[str]:
    """requirements.txt lines: every distribution the app imports, at the version installed here."""
    lines = []
    for name in SPACE_REQUIREMENTS:
        try:
            lines.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise ValueError(f"{name} is not installed; install wukong-hf with the [space] extra before exporting.") from None
    return lines


def check_space_request(space_id: str, images: str | Path | None) -> None:
    """Raise ValueError / FileNotFoundError for a malformed Space id or a missing image folder (before any work)."""
    if space_id.count("/") != 1 or not all(space_id.split("/")):
        raise ValueError(f"Space id {space_id!r} must look like 'org/name'.")
    if images is not None and not Path(images).is_dir():
        raise FileNotFoundError(f"--space-images {images} is not a folder; give the folder of images to search.")


def _copy_package(target: Path) -> None:
    import wukong_hf

    source = Path(wukong_hf.__file__).resolve().parent
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _copy_images(source: Path, target: Path) -> int:
    images, _ = image_files(source)
    for path in images:
        relative = path.relative_to(source)
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / relative)
    return len(images)


def write_space_folder(
    out: str | Path,
    model: str,
    images: str | Path | None = None,
    title: str | None = None,
    templates: str = "imagenet1k",
) -> Path:
    """Write a Space folder that runs the app on `model`.

    Args:
        out: the folder to write (absent or empty).
        model: a local model folder (saved into out/model) or a Hub id (loaded from the Hub by the Space).
        images: a folder whose image files go to out/images for the search tab, or None.
        title: the Space's title (default: "Wukong · <model name>").
        templates: the ensemble's prompt templates ("imagenet1k" or a file), written to prompts_zh.txt.

    Returns:
        out as a Path.
    """
    from huggingface_hub import SpaceCard, SpaceCardData

    from .handlers import _HUB_ID

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"Space folder {out} is not empty; choose a new folder so nothing is overwritten.")
    local = Path(model).expanduser()
    if not local.is_dir() and not _HUB_ID.match(model):
        raise FileNotFoundError(f"--model {model}: no such folder, and not a Hub id (org/name).")
    if local.is_dir() and not (local / "config.json").is_file():
        raise FileNotFoundError(f"--model {model} is not a saved model folder (no config.json in it).")
    if images is not None and not Path(images).is_dir():
        raise FileNotFoundError(f"--images {images} is not a folder; give the folder of images to search.")
    requirements = space_requirements()
    out.mkdir(parents=True, exist_ok=True)
    # A training output's own name says little ("final"): name a local model by its last three path parts.
    model_name = "/".join(local.resolve().parts[-3:]) if local.is_dir() else model
    if local.is_dir():
        from transformers import AutoModel, AutoProcessor

        import wukong_hf  # noqa: F401  (registers the Auto classes)

        AutoModel.from_pretrained(local).save_pretrained(out / "model")
        AutoProcessor.from_pretrained(local).save_pretrained(out / "model")
        model_expr = 'str(HERE / "model")'
    else:
        model_expr = repr(model)
    if images is not None and not _copy_images(Path(images), out / "images"):
        raise ValueError(f"--images {images} has no image files ({', '.join(IMAGE_EXTENSIONS)}).")
    _copy_package(out / "wukong_hf")
    try:
        from ..evaluation.prompts import load_templates

        (out / "prompts_zh.txt").write_text("\n".join(load_templates(templates)) + "\n", encoding="utf-8")
    except (ValueError, FileNotFoundError):
        pass  # without clip-benchmark the ensemble choice says why it is missing; the rest works
    (out / "app.py").write_text(_APP.format(model_name=model_name, model_expr=model_expr), encoding="utf-8")
    (out / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    title = title or f"Wukong · {model_name}"
    gradio_version = requirements[0].split("==")[1]
    card_data = SpaceCardData(
        title=title[:60],
        sdk="gradio",
        sdk_version=gradio_version,
        python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
        app_file="app.py",
        license="apache-2.0",
        models=None if local.is_dir() else [model],
        tags=["wukong", "chinese", "clip", "zero-shot-image-classification", "image-search"],
        emoji="🐒",
        colorFrom="yellow",
        colorTo="red",
        pinned=False,
        short_description="Chinese zero-shot, text-to-image search, Figure 4",
    )
    images_line = "the images bundled in `images/`" if images is not None else "a folder of images (none bundled here)"
    body = _BODY.format(title=title, model_name=model_name, images_line=images_line)
    SpaceCard(f"---\n{card_data.to_yaml()}\n---\n{body}").save(out / "README.md")
    return out


def push_space(
    space_id: str,
    model_repo_id: str,
    images: str | Path | None = None,
    *,
    private: bool = False,
    token: str | None = None,
    dry_run_dir: str | Path | None = None,
    title: str | None = None,
) -> str:
    """Write the Space folder for the Hub model `model_repo_id` and upload it to the Space `space_id`.

    With dry_run_dir, only writes the folder there and returns its path; otherwise creates the
    Space (Gradio SDK) if needed, uploads, and returns the commit URL.
    """
    from huggingface_hub import HfApi

    check_space_request(space_id, images)
    if dry_run_dir is not None:
        return str(write_space_folder(dry_run_dir, model_repo_id, images, title))
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_space_folder(Path(tmp) / "space", model_repo_id, images, title)
        api = HfApi(token=token)
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=space_id, repo_type="space",
                                   commit_message="Wukong Space (wukong-hf)")
    return str(getattr(commit, "commit_url", commit))
