"""In-memory memo of text features for inference: the same label batch against many images encodes once.

The zero-shot pipeline calls `WukongModel.forward(input_ids, pixel_values, attention_mask)` once per
image with the same candidate labels; without the memo the text tower re-encodes the identical batch
every time. The memo keeps the features computed for a batch and hands back copies of them, so a
hit gives bit for bit what the tower gave (nothing is recomputed or approximated).

A hit needs all of: inference (model in eval mode, autograd off: `torch.no_grad` / `inference_mode`),
no autocast, no hooks on a text-side module (they would not run on a hit; transformers' own idle
output-capturing hooks excepted), no hidden states or attentions asked of the text tower, the same
ids and mask (bytes, shape, dtype, device), the same text settings and the same text-side weights. Weights are fingerprinted by each text-side parameter's and buffer's
(data_ptr, _version, dtype, device, shape, stride) and the identity of every text-side module:
in-place edits bump `_version`, `load_state_dict` copies in place, `.to()` / `param.data = ...`
give new storage. The memo keeps the fingerprinted storages and modules alive while it holds
entries, so no new tensor or module can reuse their address or id (replaced weights stay in memory
until the next lookup, which drops every entry of other weights). `train()`, `eval()` and `.to()` / `.half()` empty it.

Turn it off with `model.text_feature_memo.enabled = False`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

__all__ = ["TextFeatureMemo"]


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return 0


def _user_hook(hook) -> bool:
    # transformers installs these once, on the first call asking for hidden states / attentions, and leaves
    # them in place; they do nothing unless a call asks again (and such calls bypass the memo).
    return not (getattr(hook, "__module__", "") == "transformers.utils.output_capturing"
                and getattr(hook, "__name__", "") == "output_capturing_hook")


class TextFeatureMemo:
    """LRU memo: text batch -> (text tower output, WukongTextFeatures), for one set of text-side weights.

    enabled: use it at all (default True). max_entries: batches kept (default 64). max_bytes: total
    size of the kept tensors (default 256 MiB); a batch bigger than that is not kept. hits / misses:
    counters (lookups that bypassed the memo count as neither).
    """

    def __init__(self, enabled: bool = True, max_entries: int = 64, max_bytes: int = 256 * 2**20):
        self.enabled, self.max_entries, self.max_bytes = enabled, max_entries, max_bytes
        self.hits = self.misses = 0
        self._entries: OrderedDict = OrderedDict()
        self._bytes = 0
        self._fingerprint: tuple | None = None
        self._keepalive: list = []  # holds fingerprinted storages/modules so their addresses and ids stay unique

    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
        self._entries.clear()
        self._bytes = 0
        self._fingerprint, self._keepalive = None, []

    def __len__(self) -> int:
        return len(self._entries)

    def __getstate__(self) -> dict:
        # A copied or pickled model starts with an empty memo: entries belong to this model's storages.
        state = dict(self.__dict__)
        state.update(_entries=OrderedDict(), _bytes=0, _fingerprint=None, _keepalive=[])
        return state

    def __repr__(self) -> str:
        return (f"TextFeatureMemo(enabled={self.enabled}, entries={len(self)}, bytes={self._bytes}, "
                f"hits={self.hits}, misses={self.misses})")

    # ----- used by WukongModel ------------------------------------------------------------------
    @staticmethod
    def usable(model: torch.nn.Module, modules: list[torch.nn.Module]) -> bool:
        """Whether this call may be served from / stored in the memo (inference, no autocast, no hooks)."""
        if model.training or torch.is_grad_enabled():
            return False
        if torch.is_autocast_enabled("cpu") or (torch.cuda.is_available() and torch.is_autocast_enabled("cuda")):
            return False
        hooks = torch.nn.modules.module
        if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
            return False
        return not any(m._forward_pre_hooks or any(map(_user_hook, m._forward_hooks.values())) for m in modules)

    @staticmethod
    def fingerprint(modules: list[torch.nn.Module], settings: tuple) -> tuple[tuple, list] | None:
        """(fingerprint of the text side's weights and settings, the objects to keep alive), or None
        where it cannot be fingerprinted: inference tensors as weights (no version counter), weights on
        the meta device (offloaded), quantized modules (packed weights)."""
        parts: list = [settings, torch.get_num_threads(), tuple(id(m) for m in modules)]
        keep: list = list(modules)
        for module in modules:
            if hasattr(module, "_packed_params"):  # quantized: weights live outside parameters and buffers
                return None
            for tensor in (*module._parameters.values(), *module._buffers.values()):
                if tensor is None:
                    parts.append(None)
                    continue
                if tensor.is_inference() or tensor.is_meta:  # no version counter / offloaded weights
                    return None
                parts.append((tensor.data_ptr(), tensor._version, tensor.dtype, tensor.device, tuple(tensor.shape),
                              tensor.stride()))
                keep.append(tensor.detach())
        return tuple(parts), keep

    @staticmethod
    def batch_key(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple:
        """The whole batch: bytes, shape, dtype and device of the ids and of the mask (None stays None)."""

        def describe(t):
            if t is None:
                return None
            raw = t.detach().contiguous().cpu().reshape(-1)
            return tuple(t.shape), t.dtype, t.device, (raw.view(torch.uint8) if raw.numel() else raw).numpy().tobytes()

        return describe(input_ids), describe(attention_mask)

    def lookup(self, fingerprint: tuple, keep: list, key: tuple):
        """The stored (tower output, features) for key, or None; entries of other weights are dropped."""
        if fingerprint != self._fingerprint:
            self.clear()
            self._fingerprint, self._keepalive = fingerprint, keep
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found

    def store(self, key: tuple, tower_output: Any, features: Any) -> None:
        """Keep (tower output, features) for key, evicting the least recently used past the limits."""
        size = sum(_tensor_bytes(v) for v in tower_output.values()) + sum(
            _tensor_bytes(v) for v in features._rows().values())
        if size > self.max_bytes or self.max_entries < 1:
            return
        self._entries[key] = (tower_output, features, size)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, (_, _, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped


def copy_output(tower_output: Any) -> Any:
    """A ModelOutput with every tensor cloned (so a caller's in-place edit cannot reach the memo)."""
    return type(tower_output)(**{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in tower_output.items()})


def copy_features(features: Any) -> Any:
    """WukongTextFeatures with every per-row tensor cloned."""
    return features.map_rows(lambda _name, value: value.clone())
