"""Content fingerprints of a model's towers and of a tokenizer: the keys of every on-disk cache.

A fingerprint is the SHA-256 of what decides a tower's features: the tower's config (minus
bookkeeping such as transformers_version or the folder it was loaded from) and the bytes of
every weight it uses. Two models with the same fingerprint give the same features; a model
trained one more step, converted again, or loaded in another dtype gets a new one. Hashing a
ViT-B/32 + BERT-base model's 190M weights takes about 2 s on a 2-core CPU, so callers compute it
once per run, not per batch.
"""

from __future__ import annotations

import hashlib
import json

import torch

__all__ = ["tower_fingerprint", "tokenizer_fingerprint", "model_fingerprint", "update_with_strings", "TOWER_PARTS"]

# Which weights and which top-level config fields decide each tower's features.
TOWER_PARTS = {
    "image": {
        "prefixes": ("vision_model.", "visual_projection.", "token_reduction."),
        "config": ("vision_config", "image_size", "image_pooling", "num_reduced_tokens", "token_reduction_groups",
                   "token_wise_image_cls", "projection_dim", "similarity"),
    },
    "text": {
        "prefixes": ("text_model.", "text_projection."),
        "config": ("text_config", "text_pooling", "token_wise_text_cls", "token_wise_text_sep", "projection_dim",
                   "text_position_embeddings", "similarity"),
    },
}
# Config entries that say where or how a model was saved, not what it computes.
_BOOKKEEPING = {"transformers_version", "_name_or_path", "_commit_hash", "architectures", "auto_map", "dtype",
                "torch_dtype", "output_hidden_states", "output_attentions", "return_dict", "_attn_implementation",
                "_attn_implementation_autoset", "id2label", "label2id"}


def _clean(value):
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in sorted(value.items()) if k not in _BOOKKEEPING}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    # A byte view of any dtype (bf16 has no numpy type), on the CPU.
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().data


def tower_fingerprint(model, tower: str) -> str:
    """SHA-256 hex of one tower ("image" or "text") of a WukongModel: its config fields and weights.

    Objects that are not torch models (e.g. an OnnxEncoder) carry the fingerprints of the model
    they were made from in a `fingerprints` dict, which is returned as is.
    """
    if tower not in TOWER_PARTS:
        raise ValueError(f"Unknown tower {tower!r}: expected 'image' or 'text'.")
    carried = getattr(model, "fingerprints", None)
    if isinstance(carried, dict) and tower in carried:
        return carried[tower]
    parts = TOWER_PARTS[tower]
    config = model.config.to_dict()
    digest = hashlib.sha256()
    digest.update(json.dumps(_clean({k: config.get(k) for k in parts["config"]}), sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        if name.startswith(parts["prefixes"]):
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def model_fingerprint(model) -> dict[str, str]:
    """{"image": ..., "text": ...} tower fingerprints of a model."""
    return {tower: tower_fingerprint(model, tower) for tower in TOWER_PARTS}


def tokenizer_fingerprint(processor) -> str:
    """SHA-256 hex of a processor's tokenizer: its full Rust-tokenizer definition and maximum length."""
    tokenizer = getattr(processor, "tokenizer", processor)
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # transformers sets the Rust tokenizer's padding/truncation state at every call: not part of what it is.
        definition = json.loads(backend.to_str())
        definition.pop("padding", None)
        definition.pop("truncation", None)
        digest.update(json.dumps(definition, sort_keys=True, ensure_ascii=False).encode())
    else:  # a slow tokenizer: its vocabulary and class say what it does
        digest.update(type(tokenizer).__name__.encode())
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    digest.update(f"max_length={getattr(processor, 'max_length', tokenizer.model_max_length)}".encode())
    digest.update(f"split_special_tokens={getattr(tokenizer, 'split_special_tokens', None)}".encode())
    return digest.hexdigest()


def update_with_strings(digest, strings) -> None:
    """Feed strings (texts, ids) to a hashlib digest, each followed by a NUL: ["ab", "c"] and ["a", "bc"] differ."""
    for string in strings:
        digest.update(string.encode("utf-8"))
        digest.update(b"\x00")
