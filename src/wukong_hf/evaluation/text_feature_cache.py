"""On-disk cache of encoded prompt texts, so a zero-shot rerun on new images encodes no text.

Zero-shot classification with the 80 Chinese templates encodes 80 x C prompts (80,000 for
ImageNet) on every run, even when only the images changed. This cache keeps the features that
`encode_texts` returns in one safetensors file per (text tower, tokenizer, list of texts):

    key = SHA-256 of (cache format, text-tower fingerprint: its config and weights,
                      tokenizer fingerprint, whether token features are kept, the texts in order)

The texts are the filled prompts, so the class names and the templates (and their order) are part
of the key; the fingerprints (wukong_hf.evaluation.fingerprints) change with any weight, so a
retrained or re-converted model never reads another model's features.

Location: `$WUKONG_HF_TEXT_CACHE` if set ("off" disables it), else
`$XDG_CACHE_HOME/wukong_hf/text_features` (`~/.cache/wukong_hf/text_features`). Files are
written to a temporary name and renamed into place, so a killed run never leaves a partial file
under a key; a file that is unreadable or does not match its key anyway (disk error, manual
edits) is reported, deleted and encoded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from ..features import WukongTextFeatures
from .encoding import encode_texts
from .fingerprints import tokenizer_fingerprint, tower_fingerprint, update_with_strings

__all__ = ["TextFeatureCache", "default_text_cache_dir", "default_cache_root", "as_text_cache", "CACHE_ENV", "CACHE_FORMAT"]

logger = logging.getLogger(__name__)

CACHE_ENV = "WUKONG_HF_TEXT_CACHE"
CACHE_FORMAT = "wukong-text-features/1"
_OFF = {"off", "0", "false", "no", "none"}


def default_cache_root() -> Path:
    """`$XDG_CACHE_HOME/wukong_hf` (`~/.cache/wukong_hf`): where wukong-hf keeps what it can make again."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wukong_hf"


def default_text_cache_dir() -> Path | None:
    """`$WUKONG_HF_TEXT_CACHE` ("off" -> None), else `default_cache_root() / "text_features"`."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in _OFF else Path(value).expanduser()
    return default_cache_root() / "text_features"


def as_text_cache(value) -> "TextFeatureCache | None":
    """None/False -> no cache; True -> the default location; a folder -> a cache there; a cache as is."""
    if value is None or value is False:
        return None
    if isinstance(value, TextFeatureCache):
        return value
    if value is True:
        folder = default_text_cache_dir()
        return None if folder is None else TextFeatureCache(folder)
    return TextFeatureCache(value)


class TextFeatureCache:
    """A folder of encoded text lists, one `<key>.safetensors` file each.

    `hits` / `misses` count lookups of this object (tests and reports read them).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser()
        self.hits = 0
        self.misses = 0

    def key(self, text_tower: str, tokenizer: str, keeps_tokens: bool, texts: Sequence[str]) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps([CACHE_FORMAT, text_tower, tokenizer, keeps_tokens, len(texts)]).encode())
        update_with_strings(digest, texts)
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def load(self, key: str, num_texts: int) -> WukongTextFeatures | None:
        """The cached features under `key`, or None when absent; a damaged file is deleted (and None)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                if metadata.get("format") != CACHE_FORMAT or metadata.get("key") != key:
                    raise ValueError(f"its metadata names format {metadata.get('format')!r} and another key")
                tensors = {name: f.get_tensor(name) for name in WukongTextFeatures.ROW_FIELDS if name in f.keys()}
            features = WukongTextFeatures.from_tensors(tensors)  # ValueError without embeds
            if any(len(t) != num_texts for t in tensors.values()):
                raise ValueError(f"it does not hold {num_texts} texts")
            return features
        except Exception as err:  # safetensors raises its own error types for truncated or garbled files
            logger.warning("text feature cache file %s is unreadable (%s); deleting it and encoding again", path, err)
            path.unlink(missing_ok=True)
            return None

    def save(self, key: str, features: WukongTextFeatures, description: dict | None = None) -> Path:
        """Write features under `key` atomically (temporary file, then rename)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors, _ = features.to_tensors()
        metadata = {"format": CACHE_FORMAT, "key": key, **{k: json.dumps(v) for k, v in (description or {}).items()}}
        handle, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{key[:16]}.", suffix=".tmp")
        os.close(handle)
        try:
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, self.path(key))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return self.path(key)

    def encoder_for(self, model, processor):
        """A function texts -> WukongTextFeatures for this model that reads and fills the cache.

        The fingerprints are computed here once (about 1 s for a BERT-base text tower), not per call.
        """
        text_tower = tower_fingerprint(model, "text")
        tokenizer = tokenizer_fingerprint(processor)
        keeps_tokens = model.similarity_rule.uses_tokens

        def encode(texts: Sequence[str], **encode_kwargs) -> WukongTextFeatures:
            texts = list(texts)
            key = self.key(text_tower, tokenizer, keeps_tokens, texts)
            cached = self.load(key, len(texts))
            if cached is not None:
                self.hits += 1
                return cached
            self.misses += 1
            features = encode_texts(model, processor, texts, **encode_kwargs)
            try:
                self.save(key, features, {"num_texts": len(texts), "text_tower": text_tower, "tokenizer": tokenizer})
            except OSError as err:  # a full or read-only disk must not lose the evaluation
                logger.warning("could not write the text feature cache in %s (%s); continuing without it", self.folder, err)
            return features

        return encode

    def encode(self, model, processor, texts: Sequence[str], **encode_kwargs) -> WukongTextFeatures:
        """`encode_texts(model, processor, texts)` through the cache."""
        return self.encoder_for(model, processor)(texts, **encode_kwargs)

