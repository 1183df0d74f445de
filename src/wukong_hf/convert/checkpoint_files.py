"""Read checkpoint files without executing anything they carry.

Supported: safetensors files; PyTorch files (flat state dict, or under "state_dict"/"model", keys
optionally prefixed "module.") read with ``torch.load(weights_only=True)``; Python pickles of a
dict of numpy arrays (the released "MindSpore" downloads) read with an unpickler that admits only
numpy arrays, numpy dtypes and plain containers. Anything else is refused with a clear error.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

__all__ = ["CheckpointFormatError", "load_state_dict_file", "unwrap_state_dict"]


class CheckpointFormatError(ValueError):
    """A checkpoint file that cannot be read safely or holds no state dict."""


# (module, name) pairs a pickle of numpy arrays needs; everything else is refused before it runs.
_NUMPY_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"),
    ("builtins", "bytearray"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose find_class admits only numpy arrays/dtypes and plain containers.

    Written here because no maintained library offers an array-only unpickler for plain pickles.
    """

    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise CheckpointFormatError(
            f"refusing to load {module}.{name}: this pickle asks for a Python object other than numpy arrays, "
            "so it could run code. Only pickles of plain dicts of numpy arrays are accepted; convert the file "
            "to safetensors (or a torch state dict) in a trusted environment first."
        )


def _load_numpy_pickle(path: Path) -> object:
    with open(path, "rb") as handle:
        try:
            return _NumpyOnlyUnpickler(handle).load()
        except CheckpointFormatError as err:
            raise CheckpointFormatError(f"{path}: {err}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
            raise CheckpointFormatError(
                f"{path}: not a readable checkpoint (neither safetensors, a torch file nor a pickle of numpy "
                f"arrays): {err}"
            ) from None


def _load_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointFormatError(
            f"{path}: refused by torch.load(weights_only=True): the file holds objects other than tensors and "
            f"plain containers, so loading it could run code ({str(err).splitlines()[0]}). Re-save its state dict "
            "with torch.save(model.state_dict()) or as safetensors in a trusted environment."
        ) from None
    except RuntimeError as err:
        raise CheckpointFormatError(f"{path}: not a readable PyTorch checkpoint: {err}") from None


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A loaded checkpoint object -> flat {key: float tensor}, with "state_dict"/"model" and "module." removed."""
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointFormatError(
            f"{source}: expected a dict of weights (flat or under 'state_dict'), got {type(obj).__name__}."
        )
    state = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointFormatError(f"{source}: state dict key {key!r} is not a string.")
        if isinstance(value, np.ndarray | np.generic):
            value = torch.from_numpy(np.array(value))
        if not isinstance(value, torch.Tensor):
            raise CheckpointFormatError(
                f"{source}: entry {key!r} is a {type(value).__name__}, not an array; a state dict holds only arrays."
            )
        state[key.removeprefix("module.")] = value
    return state


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file safely into a flat {key: tensor} dict (see the module docstring for formats)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return unwrap_state_dict(load_file(str(path)), str(path))
    if zipfile.is_zipfile(path):
        return unwrap_state_dict(_load_torch(path), str(path))
    obj = _load_numpy_pickle(path)
    if isinstance(obj, int):  # legacy (pre-zip) torch.save files open with a pickled magic number
        return unwrap_state_dict(_load_torch(path), str(path))
    return unwrap_state_dict(obj, str(path))

