"""The features a Wukong model hands to everything after it: the loss, evaluation, zero-shot
ensembles and word-patch pictures all take these two types and nothing else.

    WukongImageFeatures: embeds (N, D), token_embeds (N, n1, D), token_mask (N, n1),
                         plus the patch grid and the number of prefix ([CLS]) tokens
    WukongTextFeatures:  embeds (N, D), token_embeds (N, n2, D), token_mask (N, n2),
                         plus has_padding (N,): the text is shorter than the tower's context

Embeddings are L2-normalised; `token_mask` is True where a token takes part in token-wise
scoring. `token_embeds`/`token_mask` may be None where only global scores are needed.

Files of features (`wukong embed`, the text feature cache, the demo's search index) store them
as safetensors through `to_tensors()` / `from_tensors(tensors, metadata)`: one tensor per
per-item field, named after it, and the image layout as string metadata.

This module imports only torch and the standard library: it is copied next to the modeling file
when a model is saved with remote code, so it must stay self-contained.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["WukongImageFeatures", "WukongTextFeatures"]


@dataclass
class _Features:
    """Per-item features of N images or texts (rows are items)."""

    embeds: torch.Tensor
    token_embeds: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None

    # The per-item tensors (first axis = items); subclasses add theirs. Other fields describe all rows.
    ROW_FIELDS = ("embeds", "token_embeds", "token_mask")

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def _rows(self) -> dict[str, torch.Tensor | None]:
        return {name: getattr(self, name) for name in self.ROW_FIELDS}

    def map_rows(self, fn) -> "_Features":
        """The same features with fn(name, tensor) applied to every per-item tensor that is not None."""
        return dataclasses.replace(self, **{k: None if v is None else fn(k, v) for k, v in self._rows().items()})

    def select(self, index: torch.Tensor | slice | list[int] | int) -> "_Features":
        """The features of a subset of items (indexing the first axis; an int keeps the axis)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self.map_rows(lambda name, value: value[index])

    def detach(self) -> "_Features":
        return self.map_rows(lambda name, value: value.detach())

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "_Features":
        """Move every tensor to `device`; `dtype` applies to the floating-point tensors only (masks stay bool)."""
        return self.map_rows(
            lambda name, value: value.to(device=device, dtype=dtype if value.is_floating_point() else None)
        )

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """(tensors, metadata) for a safetensors file: every per-item tensor that is not None, by field
        name (contiguous), and the fields that describe all rows as strings (images: grid, num_prefix_tokens)."""
        tensors = {name: value.contiguous() for name, value in self._rows().items() if value is not None}
        return tensors, self._layout_metadata()

    def _layout_metadata(self) -> dict[str, str]:
        return {}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> "_Features":
        """The features `to_tensors` wrote: tensors by field name (others are ignored), metadata as it wrote
        it (missing layout fields take their defaults). Raises ValueError without an `embeds` tensor."""
        if "embeds" not in tensors:
            raise ValueError(f"no 'embeds' tensor (it holds {sorted(tensors)})")
        rows = {name: tensors[name] for name in cls.ROW_FIELDS if name in tensors}
        return cls(**rows, **cls._layout_from_metadata(metadata or {}))

    @classmethod
    def _layout_from_metadata(cls, metadata: Mapping[str, str]) -> dict:
        return {}

    def without_tokens(self) -> "_Features":
        """The same items without token embeddings (global scoring needs only `embeds`)."""
        return dataclasses.replace(self, token_embeds=None, token_mask=None)

    @classmethod
    def concat(cls, items: Sequence["_Features"]) -> "_Features":
        """Concatenate along the item axis; the non-row fields (grid, prefix count) must agree."""
        if not items:
            raise ValueError("No features to concatenate: every item was skipped or the input was empty.")
        first = items[0]
        for other in items[1:]:
            for field in dataclasses.fields(first):
                if field.name not in first.ROW_FIELDS and getattr(other, field.name) != getattr(first, field.name):
                    raise ValueError(
                        f"Cannot concatenate features with different {field.name}: {getattr(first, field.name)} and "
                        f"{getattr(other, field.name)} (were they made by the same model?)."
                    )
        rows = {}
        for name in first.ROW_FIELDS:
            values = [getattr(item, name) for item in items]
            if any(v is None for v in values) and not all(v is None for v in values):
                raise ValueError(f"Cannot concatenate features where only some items have {name}.")
            rows[name] = None if values[0] is None else torch.cat(values)
        return dataclasses.replace(first, **rows)


@dataclass
class WukongImageFeatures(_Features):
    """Image features of N images.

    embeds: (N, D) normalised global embeddings.
    token_embeds: (N, n1, D) normalised token embeddings: `num_prefix_tokens` prefix tokens
        ([CLS]) first, then the patch tokens in row-major order over `grid`, or the learned
        reduced tokens when the model has token reduction (then `grid` is None).
    token_mask: (N, n1) bool, True where a token counts in token-wise scoring.
    grid: (H, W) of the patch tokens, or None when they are not patches of the image.
    num_prefix_tokens: how many tokens come before the patches.
    """

    grid: tuple[int, int] | None = None
    num_prefix_tokens: int = 0

    def patch_embeds(self) -> torch.Tensor:
        """(N, H, W, D) patch token embeddings laid out on the image grid."""
        if self.token_embeds is None or self.grid is None:
            raise ValueError(
                "These image features have no patch grid (token reduction replaces patches with learned tokens, "
                "or the token embeddings were dropped); patch pictures need a token-wise model without reduction."
            )
        patches = self.token_embeds[:, self.num_prefix_tokens :]
        return patches.reshape(patches.shape[0], *self.grid, patches.shape[-1])

    def _layout_metadata(self) -> dict[str, str]:
        return {"grid": json.dumps(self.grid), "num_prefix_tokens": str(self.num_prefix_tokens)}

    @classmethod
    def _layout_from_metadata(cls, metadata: Mapping[str, str]) -> dict:
        grid = json.loads(metadata.get("grid", "null"))
        return {"grid": tuple(grid) if grid else None, "num_prefix_tokens": int(metadata.get("num_prefix_tokens", 0))}


@dataclass
class WukongTextFeatures(_Features):
    """Text features of N texts.

    embeds: (N, D) normalised global embeddings. token_embeds: (N, n2, D) normalised token
    embeddings ([CLS] first). token_mask: (N, n2) bool, True where a token counts.
    has_padding: (N,) bool, True where the text is shorter than the tower's context, so the
        released code's fixed-length layout pads it (the "zero" padding rule reads it).
    """

    has_padding: torch.Tensor | None = None

    ROW_FIELDS = ("embeds", "token_embeds", "token_mask", "has_padding")
