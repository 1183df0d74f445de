"""The image features of a search folder: encoded once per model and folder state, cached on disk.

The cache file is a safetensors file named by a hash of the model's identity, its scoring kind,
the folder and every image file's (relative path, size, modification time): adding, removing or
touching a file, or loading other weights, makes a new key; an unchanged folder loads in
milliseconds. Unreadable image files are skipped, remembered in the cache and reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from ..evaluation.encoding import NoReadableImages, encode_images, open_rgb
from ..evaluation.image_sources import IMAGE_EXTENSIONS, image_files
from ..features import WukongImageFeatures

__all__ = ["FolderFeatures", "ImageFolderIndex", "default_cache_dir", "model_fingerprint"]

CACHE_FORMAT = 1  # bump when the cache file layout changes, so old files are not read


def default_cache_dir() -> Path:
    """~/.cache/wukong-hf/space-index (XDG_CACHE_HOME respected)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wukong-hf" / "space-index"


def model_fingerprint(model, name_or_path: str) -> str:
    """What makes a model's image features differ: a local folder's weight files (path, size,
    modification time), or a Hub id at its commit."""
    folder = Path(name_or_path)
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".json", ".bin"))
        return json.dumps([str(folder.resolve())] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])
    return f"{name_or_path}@{getattr(model.config, '_commit_hash', None)}"


@dataclass
class FolderFeatures:
    """The encoded images of a folder.

    features: WukongImageFeatures of the readable images (N rows; token features only for
        token-wise models). paths: their N files, in the same order. skipped: [(file, reason)]
        for image files that could not be read. ignored: files without an image extension.
    seconds: how long encoding took (0 when read from the disk cache). from_cache: whether
    the features were read from the disk cache.
    """

    features: WukongImageFeatures
    paths: list[Path]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    seconds: float = 0.0
    from_cache: bool = False


class ImageFolderIndex:
    """The images under a folder (recursively, hidden files left out), for one model.

    folder: the search folder; must exist. cache_dir: where feature files go (None: no disk cache).
    """

    def __init__(self, folder: str | Path, cache_dir: str | Path | None = None):
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise FileNotFoundError(
                f"Image folder {self.folder} does not exist; give --images a folder of PNG/JPEG files "
                "(`wukong demo` writes one: wukong-demo/held_out)."
            )
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self._lock = threading.Lock()  # one build at a time when several pages search at once
        self._loaded: tuple[str, FolderFeatures] | None = None

    def files(self) -> tuple[list[Path], list[Path]]:
        """(image files by extension, other files), both sorted, hidden files and folders left out."""
        return image_files(self.folder)

    def check_not_empty(self) -> int:
        """The number of image files; raises ValueError when there is none."""
        images, others = self.files()
        if not images:
            found = f": it holds {len(others)} other file(s), e.g. {others[0].name}" if others else ": it is empty"
            raise ValueError(
                f"Image folder {self.folder} has no image files ({', '.join(IMAGE_EXTENSIONS)}){found}; "
                "give --images a folder of images."
            )
        return len(images)

    def cache_key(self, model_key: str, kind: str, images: list[Path]) -> str:
        """sha256 of the model identity, the scoring kind and every image file's (path, size, mtime)."""
        stats = [[str(p.relative_to(self.folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in images]
        blob = json.dumps([CACHE_FORMAT, model_key, kind, str(self.folder.resolve()), stats])
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def features(self, model, processor, model_key: str, batch_size: int = 64) -> FolderFeatures:
        """The folder's features for `model`: from memory, else the disk cache, else encoded now (tqdm)."""
        with self._lock:
            images, others = self.files()
            if not images:
                self.check_not_empty()
            key = self.cache_key(model_key, model.similarity_rule.kind, images)
            if self._loaded is not None and self._loaded[0] == key:
                return self._loaded[1]
            found = self._read_cache(key)
            if found is None:
                started = time.perf_counter()
                found = self._encode(model, processor, images, batch_size)
                found.seconds = time.perf_counter() - started
                self._write_cache(key, found)
            found.ignored = [str(p.relative_to(self.folder)) for p in others]
            self._loaded = (key, found)
            return found

    def _encode(self, model, processor, images: list[Path], batch_size: int) -> FolderFeatures:
        failures: dict[int, str] = {}

        def load(i: int):
            try:
                return open_rgb(str(images[i]))
            except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three on broken files
                failures[i] = f"{type(err).__name__}: {err}"
                raise

        loaders = [partial(load, i) for i in range(len(images))]
        try:
            features, kept, skipped = encode_images(model, processor, loaders, batch_size=batch_size, desc="search folder")
        except NoReadableImages:
            first = next(iter(failures))
            raise ValueError(
                f"None of the {len(images)} image file(s) in {self.folder} could be read (e.g. {images[first].name}: "
                f"{failures[first]}); give --images a folder of PNG/JPEG images."
            ) from None
        skipped = [(str(images[i].relative_to(self.folder)), reason) for i, reason in skipped]
        return FolderFeatures(features, [images[i] for i in kept], skipped)

    # ----- disk cache (safetensors: no pickle) ------------------------------------------------------
    def _cache_file(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"index-{key[:24]}.safetensors"

    def _write_cache(self, key: str, found: FolderFeatures) -> None:
        path = self._cache_file(key)
        if path is None:
            return
        from safetensors.torch import save_file

        tensors, layout = found.features.to_tensors()  # layout: grid and num_prefix_tokens
        metadata = {
            "key": key,
            "paths": json.dumps([str(p.relative_to(self.folder)) for p in found.paths], ensure_ascii=False),
            "skipped": json.dumps(found.skipped, ensure_ascii=False),
            **layout,
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial_path = path.with_suffix(f".{os.getpid()}.tmp")
            save_file(tensors, str(partial_path), metadata=metadata)
            partial_path.replace(path)  # atomic: a reader never sees half a file
        except OSError as err:  # a read-only cache folder costs speed, not the search
            import logging

            logging.getLogger(__name__).warning("could not write the search cache %s (%s)", path, err)

    def _read_cache(self, key: str) -> FolderFeatures | None:
        path = self._cache_file(key)
        if path is None or not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as cached:
                metadata = cached.metadata() or {}
                if metadata.get("key") != key:
                    return None
                tensors = {name: cached.get_tensor(name) for name in cached.keys()}
            features = WukongImageFeatures.from_tensors(tensors, metadata)  # ValueError without embeds
            paths = [self.folder / p for p in json.loads(metadata["paths"])]
            skipped = [tuple(item) for item in json.loads(metadata["skipped"])]
        except (OSError, ValueError, KeyError, json.JSONDecodeError):  # damaged cache: encode again
            return None
        if len(paths) != len(features) or not torch.isfinite(features.embeds).all():
            return None
        return FolderFeatures(features, paths, skipped, from_cache=True)
