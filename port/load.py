"""Safe reading of PyTorch checkpoints into numpy: no pickled code is ever executed.

`.safetensors` through safetensors; `.pth`/`.pt`/`.bin`/`.ckpt` through `torch.load(weights_only=True)`.
fp16/bf16 tensors are upcast to float32.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "module", "model_ema")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or has no usable state dict."""


def read_checkpoint(path: str | Path, *, allow: Iterable[str] = ()) -> Any:
    """The checkpoint's top-level object with every tensor turned into a numpy array.

    `allow`: dotted names of further torch classes the weights-only reader may rebuild (torch's own classes only,
    e.g. ``torch.nn.CrossEntropyLoss`` stored in a trainer's config record); nothing outside torch is accepted."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    with open(path, "rb") as f:
        lead = f.read(4)
    if not lead:
        raise CheckpointError(f"{path}: empty file")
    if lead == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: truncated or damaged (the zip container has no central directory)")
    torch = _import_torch(path)
    extra = [_torch_class(name) for name in allow]
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_numpy_data_globals() + extra):
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure becomes one clear message
        raise CheckpointError(f"{path}: {_torch_load_problem(err)}") from err
    return _to_numpy(obj)


def _import_torch(path: Path) -> Any:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: reading PyTorch files needs torch (pip install 'jaxmatte[port]'), or use a .safetensors file"
        ) from None
    return torch


def _torch_load_problem(err: Exception) -> str:
    """One line for a failed weights-only load; torch's own text spans paragraphs and suggests weights_only=False."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return (
            f"refused: the file pickles {refused.group(1)}, which weights-only reading does not rebuild "
            "(loading it the unsafe way would let the file run code)"
        )
    if "WeightsUnpickler error" in text:
        detail = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split())
        return f"refused by the weights-only reader ({detail or 'unsupported pickle content'})"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = first.split(". This is an internal miniz error")[0]
    return f"cannot be read as a weights-only PyTorch checkpoint ({type(err).__name__}: {first[:300]})"


def _torch_class(name: str) -> type:
    """The torch class `name` (``torch.``-qualified); anything else is refused."""
    import importlib

    module, _, attribute = name.rpartition(".")
    if module != "torch" and not module.startswith("torch."):
        raise CheckpointError(f"only torch classes can be allowed in a weights-only load, not {name!r}")
    found = getattr(importlib.import_module(module), attribute, None)
    if not isinstance(found, type):
        raise CheckpointError(f"{name!r} is not a torch class")
    return found


def _numpy_data_globals() -> list[Any]:
    """NumPy reconstructors that carry data only (scalars, arrays, dtypes), allowed in weights-only loading: training
    checkpoints often keep NumPy numbers in their metadata (`history`, `best_sad`)."""
    from numpy._core.multiarray import _reconstruct, scalar

    dtypes = ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")
    return [scalar, _reconstruct, np.ndarray, np.dtype, *(type(np.dtype(name)) for name in dtypes)]


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    _import_torch(path)
    try:
        from safetensors import safe_open
    except ImportError:
        raise CheckpointError(f"{path}: reading it needs safetensors (pip install 'jaxmatte[port]')") from None
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: _tensor_to_numpy(f.get_tensor(k)) for k in f.keys()}  # noqa: SIM118
    except Exception as err:  # noqa: BLE001
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{path}: not a readable safetensors file, truncated or damaged ({detail})") from err


def _tensor_to_numpy(t: Any) -> np.ndarray:
    import torch

    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t.detach().cpu().numpy()


def _to_numpy(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return _tensor_to_numpy(obj)
    if isinstance(obj, Mapping):
        return {k: _to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_numpy(v) for v in obj)
    return obj


def is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, np.ndarray) for v in obj.values())
    )


def unwrap_state_dict(obj: Any, keys: Iterable[str] = STATE_DICT_KEYS, *, source: str = "checkpoint") -> dict:
    """The tensor dict inside common wrappers (`model`, `state_dict`, ...), with `module.` prefixes stripped."""
    if not is_state_dict(obj) and isinstance(obj, Mapping):
        for key in keys:
            if key in obj and is_state_dict(obj[key]):
                obj = obj[key]
                break
    if not is_state_dict(obj):
        found = sorted(obj)[:12] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{source}: no state dict found (top level: {found}; looked for {tuple(keys)})")
    return strip_prefix(dict(obj), "module.")


def strip_prefix(state_dict: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Remove `prefix` from every key when all keys carry it."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def select_prefix(state_dict: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Keys under `prefix`, with it removed (e.g. a backbone inside a whole-model checkpoint)."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A bare state dict from any supported file and wrapper."""
    return unwrap_state_dict(read_checkpoint(path), source=str(path))
