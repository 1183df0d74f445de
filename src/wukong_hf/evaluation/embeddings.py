"""Embedding files: images or captions -> one safetensors file of features, resumable.

`embed_images` / `embed_texts` encode a collection in shards of `shard_size` items. Each finished
shard is written (atomically) to `<output>.partial/` next to a manifest that names the model's
tower fingerprint, the inputs and the options; a run that is killed and started again with the
same inputs and model reads the manifest, keeps the finished shards and encodes only the rest.
When every shard is there they are streamed into `<output>` and the partial folder is removed.

The file (format "wukong-embeddings/1"):
    tensors   embeds (N, D) float32, L2-normalised global features
              token_embeds (N, n, D) float32 and token_mask (N, n) bool, when token features were kept
              has_padding (N,) bool, texts only (the released "zero" padding rule reads it)
    metadata  format, modality ("image" | "text"), ids (JSON list, row order), skipped (JSON list of
              {"id", "reason"}: unreadable images), fingerprint (the tower's, see fingerprints.py),
              model_fingerprints (both towers', so image and text files can be paired),
              similarity and token_wise_padding (the model's SimilarityRule), grid and
              num_prefix_tokens (images), model (name or path).

`load_embeddings(path)` reads it back as WukongImageFeatures / WukongTextFeatures with their ids;
retrieval (`evaluate_retrieval(..., image_embeddings=..., text_embeddings=...)`, `wukong eval
retrieval --image-features/--text-features`) scores from it instead of encoding again. The ids
travel in the safetensors header, which the format caps at 100 MB: a few million ids per file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..features import WukongImageFeatures, WukongTextFeatures
from ..similarity import SimilarityRule
from .encoding import ImageLoader, NoReadableImages, encode_images, encode_texts
from .fingerprints import model_fingerprint, tower_fingerprint, update_with_strings

__all__ = ["Embeddings", "embed_images", "embed_texts", "load_embeddings", "check_embeddings", "EMBEDDINGS_FORMAT"]

logger = logging.getLogger(__name__)

EMBEDDINGS_FORMAT = "wukong-embeddings/1"
_TENSORS = WukongTextFeatures.ROW_FIELDS  # every per-item tensor a file can hold, in file order (images: the first 3)
_DTYPES = {torch.float32: "F32", torch.bool: "BOOL"}


@dataclass
class Embeddings:
    """Features read from an embedding file, with the id of every row.

    features: WukongImageFeatures or WukongTextFeatures (N rows). ids: N ids in row order.
    modality: "image" or "text". skipped: [{"id", "reason"}] of inputs that could not be read.
    metadata: the rest of the file's metadata (fingerprint, similarity, model ...).
    """

    features: WukongImageFeatures | WukongTextFeatures
    ids: list[str]
    modality: str
    skipped: list[dict] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    @property
    def similarity_rule(self) -> SimilarityRule:
        """The scoring rule of the model that made the file."""
        return SimilarityRule(self.metadata["similarity"], self.metadata.get("token_wise_padding", "ignore"))

    @property
    def fingerprint(self) -> str:
        return self.metadata["fingerprint"]

    def skipped_ids(self) -> dict[str, str]:
        """{id: reason} of the inputs that could not be read when the file was written."""
        return {item["id"]: item["reason"] for item in self.skipped}

    def select_ids(self, wanted: Sequence[str], source: str = "the embedding file"):
        """The features of `wanted` ids, in that order; a clear error names the ids that are missing."""
        index = {id_: row for row, id_ in enumerate(self.ids)}
        missing = [id_ for id_ in wanted if id_ not in index]
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(wanted)} {self.modality} ids are not in {source} (e.g. {missing[:3]}); embed "
                "the same collection (same ids) with `wukong embed`, or encode without the features file."
            )
        return self.features.select(torch.tensor([index[id_] for id_ in wanted], dtype=torch.long))


# ----- writing ------------------------------------------------------------------------------------
def _save_atomic(tensors: dict, path: Path, metadata: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _write_streamed(output: Path, shards: list[Path], metadata: dict, text_length: int | None) -> None:
    """Concatenate the shards' tensors row-wise into one safetensors file, one shard in memory at a time.

    Written by hand (the format is an 8-byte header size, a JSON header, raw bytes) because
    safetensors' own writer needs every tensor in memory at once; the result is read back with
    safetensors to check it.
    """
    shapes: dict[str, list[int]] = {}
    dtypes: dict[str, torch.dtype] = {}
    for path in shards:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                shape = list(f.get_slice(name).get_shape())
                if name in ("token_embeds", "token_mask") and text_length is not None:
                    shape[1] = text_length
                if name in shapes:
                    shapes[name][0] += shape[0]
                else:
                    shapes[name] = shape
                    dtypes[name] = {"F32": torch.float32, "BOOL": torch.bool}[f.get_slice(name).get_dtype()]
    names = [n for n in _TENSORS if n in shapes]
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name in names:
        size = torch.Size(shapes[name]).numel() * torch.empty((), dtype=dtypes[name]).element_size()
        header[name] = {"dtype": _DTYPES[dtypes[name]], "shape": shapes[name], "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, ensure_ascii=False).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    tmp = output.with_name(f".{output.name}.tmp")
    with open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for name in names:
            for path in shards:
                with safe_open(str(path), framework="pt") as f:
                    if name not in f.keys():
                        continue
                    tensor = f.get_tensor(name)
                if name in ("token_embeds", "token_mask") and text_length is not None and tensor.shape[1] < text_length:
                    # Texts of a shard are laid out at the shard's longest: pad to the file's (masked out).
                    extra = torch.zeros((tensor.shape[0], text_length - tensor.shape[1], *tensor.shape[2:]), dtype=tensor.dtype)
                    tensor = torch.cat([tensor, extra], dim=1)
                out.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    with safe_open(str(tmp), framework="pt") as f:  # the library must read what was written
        for name in names:
            if list(f.get_slice(name).get_shape()) != shapes[name]:
                raise RuntimeError(f"The merged embedding file has a wrong shape for {name}; this is a bug.")
    os.replace(tmp, output)


def _ids_digest(ids: Sequence[str]) -> str:
    digest = hashlib.sha256()
    update_with_strings(digest, ids)
    return digest.hexdigest()


def _run(
    modality: str,
    model,
    ids: Sequence[str],
    encode_shard: Callable[[int, int], tuple],
    output: str | os.PathLike,
    shard_size: int,
    keep_tokens: bool,
    overwrite: bool,
    progress: bool,
    model_name: str | None,
) -> Path:
    """Shared by embed_images / embed_texts: shards, manifest, resume, merge."""
    output = Path(output)
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}.")
    if not ids:
        raise ValueError(f"No {modality}s to embed: the input is empty.")
    if len(set(ids)) != len(ids):
        raise ValueError(f"The {modality} ids are not unique; every item needs its own id.")
    if output.exists() and not overwrite:
        raise ValueError(f"{output} exists already; pass --overwrite (overwrite=True) to replace it.")
    partial = output.with_name(output.name + ".partial")
    fingerprints = model_fingerprint(model)
    fingerprint = fingerprints[modality]
    rule = model.similarity_rule
    manifest = {
        "format": EMBEDDINGS_FORMAT, "modality": modality, "num_items": len(ids), "ids_sha256": _ids_digest(ids),
        "fingerprint": fingerprint, "keep_tokens": keep_tokens, "shard_size": shard_size,
    }
    manifest_path = partial / "manifest.json"
    if partial.is_dir() and overwrite:
        shutil.rmtree(partial)
    if partial.is_dir():
        try:
            found = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            found = None
        if found != manifest:
            raise ValueError(
                f"{partial} holds an unfinished run with other inputs, another model or other options; pass "
                "--overwrite (overwrite=True) to start again, or rerun with the same inputs and model to continue it."
            )
    else:
        partial.mkdir(parents=True)
        manifest_path.write_text(json.dumps(manifest, indent=1), encoding="utf-8")

    starts = list(range(0, len(ids), shard_size))
    shard_paths = [partial / f"shard-{n:06d}.safetensors" for n in range(len(starts))]

    def finished(path: Path) -> bool:
        if not path.is_file():
            return False
        try:
            with safe_open(str(path), framework="pt") as f:
                return "embeds" in f.keys() and "kept" in (f.metadata() or {})
        except Exception as err:  # safetensors raises its own error types for damaged files
            logger.warning("shard %s is unreadable (%s); encoding it again", path, err)
            path.unlink()
            return False

    done = [finished(p) for p in shard_paths]
    already = sum(min(shard_size, len(ids) - s) for s, d in zip(starts, done) if d)
    bar = tqdm(total=len(ids), initial=already, desc=f"embedding {modality}s", unit={"image": "img", "text": "text"}[modality], disable=not progress)
    if already:
        logger.info("resuming %s: %d of %d %ss already embedded", output, already, len(ids), modality)
    for start, path, is_done in zip(starts, shard_paths, done):
        if is_done:
            continue
        stop = min(start + shard_size, len(ids))
        features, kept, skipped = encode_shard(start, stop)
        if features is None:  # every item of the shard was unreadable: an empty shard still records that
            tensors, layout = {"embeds": torch.zeros(0, 0)}, {}
        else:
            tensors, layout = features.to_tensors()  # images: layout holds grid and num_prefix_tokens
        shard_meta = {"kept": json.dumps(kept), "skipped": json.dumps(skipped, ensure_ascii=False), **layout}
        _save_atomic(tensors, path, shard_meta)
        bar.update(stop - start)
    bar.close()

    kept_ids, skipped_all, text_length, image_layout = [], [], None, None
    usable = []
    for path in shard_paths:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            rows = f.get_slice("embeds").get_shape()[0]
            if rows:
                usable.append(path)
                if "token_embeds" in f.keys() and modality == "text":
                    text_length = max(text_length or 0, f.get_slice("token_embeds").get_shape()[1])
                if modality == "image" and image_layout is None:
                    image_layout = {"grid": meta["grid"], "num_prefix_tokens": meta["num_prefix_tokens"]}
        kept_ids.extend(ids[i] for i in json.loads(meta["kept"]))
        skipped_all.extend({"id": ids[i], "reason": reason} for i, reason in json.loads(meta["skipped"]))
    if not usable:
        raise ValueError(f"None of the {len(ids)} {modality}s could be read; nothing to write.")
    metadata = {
        "format": EMBEDDINGS_FORMAT, "modality": modality, "ids": json.dumps(kept_ids, ensure_ascii=False),
        "skipped": json.dumps(skipped_all, ensure_ascii=False), "fingerprint": fingerprint,
        "model_fingerprints": json.dumps(fingerprints), "similarity": rule.kind, "token_wise_padding": rule.padding,
        "model": model_name or str(getattr(model.config, "_name_or_path", "") or ""),
        "keep_tokens": json.dumps(keep_tokens), "num_items": str(len(kept_ids)),
        **(image_layout or {}),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    _write_streamed(output, usable, metadata, text_length)
    shutil.rmtree(partial)
    if skipped_all:
        logger.warning("%d %s(s) could not be read, first: %s", len(skipped_all), modality, skipped_all[0])
    return output


def embed_images(
    model,
    processor,
    loaders: Sequence[ImageLoader],
    ids: Sequence[str],
    output: str | os.PathLike,
    batch_size: int = 64,
    shard_size: int = 1024,
    keep_tokens: bool | None = None,
    overwrite: bool = False,
    progress: bool = True,
    model_name: str | None = None,
) -> Path:
    """Embed images into a safetensors file, resumably (see the module docstring).

    Args:
        model: a WukongModel (eval mode) or an OnnxEncoder. processor: its WukongProcessor.
        loaders: one zero-argument callable per image returning a PIL image. ids: one id per image.
        output: the file to write. shard_size: images per resumable shard.
        keep_tokens: store token features (default: when the model's similarity rule reads them).

    Returns the path of the finished file. Unreadable images are left out and listed in its metadata.
    """
    if len(loaders) != len(ids):
        raise ValueError(f"{len(loaders)} images but {len(ids)} ids; give one id per image.")
    keep = model.similarity_rule.uses_tokens if keep_tokens is None else keep_tokens

    def encode_shard(start: int, stop: int):
        chunk = list(loaders[start:stop])
        quiet = logging.getLogger("wukong_hf.evaluation.encoding")  # it would name shard-local indices;
        level = quiet.level  # the file's own warning names the ids at the end
        quiet.setLevel(logging.ERROR)
        try:
            features, kept, skipped = encode_images(model, processor, chunk, batch_size, progress=False, keep_tokens=keep)
        except NoReadableImages:
            return None, [], [(start + i, "unreadable image") for i in range(len(chunk))]
        finally:
            quiet.setLevel(level)
        return features, [start + i for i in kept], [(start + i, reason) for i, reason in skipped]

    return _run("image", model, list(ids), encode_shard, output, shard_size, keep, overwrite, progress, model_name)


def embed_texts(
    model,
    processor,
    texts: Sequence[str],
    ids: Sequence[str],
    output: str | os.PathLike,
    batch_size: int = 256,
    shard_size: int = 8192,
    keep_tokens: bool | None = None,
    overwrite: bool = False,
    progress: bool = True,
    model_name: str | None = None,
) -> Path:
    """Embed captions into a safetensors file, resumably (see the module docstring).

    Args as embed_images, with `texts` (one string per id) in place of the image loaders.
    """
    if len(texts) != len(ids):
        raise ValueError(f"{len(texts)} texts but {len(ids)} ids; give one id per text.")
    keep = model.similarity_rule.uses_tokens if keep_tokens is None else keep_tokens

    def encode_shard(start: int, stop: int):
        features = encode_texts(model, processor, texts[start:stop], batch_size, progress=False, keep_tokens=keep)
        return features, list(range(start, stop)), []

    return _run("text", model, list(ids), encode_shard, output, shard_size, keep, overwrite, progress, model_name)


# ----- reading ------------------------------------------------------------------------------------
def load_embeddings(path: str | os.PathLike) -> Embeddings:
    """Read an embedding file written by embed_images / embed_texts (`wukong embed`)."""
    path = Path(path)
    if not path.is_file():
        partial = path.with_name(path.name + ".partial")
        hint = f" ({partial} holds an unfinished run: rerun the same `wukong embed` command to finish it)" if partial.is_dir() else ""
        raise FileNotFoundError(f"Embedding file {path} does not exist{hint}.")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in _TENSORS if name in f.keys()}
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{path} is not a readable safetensors file ({err}); write it again with `wukong embed`.") from err
    if metadata.get("format") != EMBEDDINGS_FORMAT:
        raise ValueError(f"{path} is not a wukong embedding file (format {metadata.get('format')!r}, expected "
                         f"{EMBEDDINGS_FORMAT!r}); write it with `wukong embed`.")
    modality = metadata["modality"]
    ids = json.loads(metadata.pop("ids"))
    skipped = json.loads(metadata.pop("skipped"))
    kind = WukongImageFeatures if modality == "image" else WukongTextFeatures
    try:
        features = kind.from_tensors(tensors, metadata)
    except ValueError as err:
        raise ValueError(f"{path} is not a complete embedding file ({err}); write it again with `wukong embed`.") from err
    if len(ids) != len(features):
        raise ValueError(f"{path} names {len(ids)} ids for {len(features)} rows; write it again with `wukong embed`.")
    return Embeddings(features=features, ids=ids, modality=modality, skipped=skipped, metadata=metadata)


def check_embeddings(model, image_embeddings: Embeddings | None, text_embeddings: Embeddings | None) -> SimilarityRule:
    """The SimilarityRule to score with, after checking the files against each other and the model.

    With a model: each file must come from that model's tower (same fingerprint). Without one:
    both files are needed and must come from the same model. Token-wise rules need token features.
    """
    for embeddings, modality in ((image_embeddings, "image"), (text_embeddings, "text")):
        if embeddings is not None and embeddings.modality != modality:
            raise ValueError(f"The {modality} features file holds {embeddings.modality} features; pass it as "
                             f"--{embeddings.modality}-features.")
    if model is None:
        if image_embeddings is None or text_embeddings is None:
            raise ValueError("Without a model, retrieval needs both --image-features and --text-features; pass --model "
                             "to encode the other side.")
        pair = json.loads(image_embeddings.metadata.get("model_fingerprints", "{}"))
        if pair.get("text") != text_embeddings.fingerprint:
            raise ValueError("The image and text features files were made by different models; embed both with the same model.")
        rule = image_embeddings.similarity_rule
    else:
        rule = model.similarity_rule
        for embeddings, modality in ((image_embeddings, "image"), (text_embeddings, "text")):
            if embeddings is not None and embeddings.fingerprint != tower_fingerprint(model, modality):
                raise ValueError(
                    f"The {modality} features file was made by another {modality} tower than this model's (fingerprint "
                    f"{embeddings.fingerprint[:12]} vs {tower_fingerprint(model, modality)[:12]}); embed with this model, "
                    "or pass the model that made it."
                )
    for embeddings in (image_embeddings, text_embeddings):
        if embeddings is not None and rule.uses_tokens and embeddings.features.token_embeds is None:
            raise ValueError(f"Token-wise scoring needs token features, but the {embeddings.modality} features file has "
                             "only global ones; embed again with --tokens.")
    return rule
