"""Helpers for parity tests against PyTorch references: perturbation, saving, and the tolerance check."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from port.reference import perturb_

__all__ = ["assert_close", "nchw_to_nhwc", "perturb_", "save_safetensors", "timed"]

ATOL = 1e-4
REL = 1e-5


def save_safetensors(module, path: Path) -> Path:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path))
    return path


def nchw_to_nhwc(x) -> np.ndarray:
    return np.asarray(x.detach().numpy() if hasattr(x, "detach") else x).transpose(0, 2, 3, 1)


def assert_close(ours, ref, *, atol: float = ATOL, rel: float = REL, name: str = "output") -> float:
    """max|diff| <= atol and max|diff| / max|ref| <= rel; returns max|diff|."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref.detach().numpy() if hasattr(ref, "detach") else ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != reference {ref.shape}"
    assert np.isfinite(ours).all(), f"{name}: non-finite values"
    diff = float(np.abs(ours - ref).max())
    scale = float(np.abs(ref).max())
    assert diff <= atol, f"{name}: max|diff| {diff:.3g} > {atol:g} (max|ref| {scale:.3g})"
    assert diff <= rel * max(scale, 1e-12), f"{name}: relative {diff / scale:.3g} > {rel:g}"
    return diff


def timed(label: str, fn, *args):
    """`fn(*args)` (blocked until ready), printing its wall time under `label`."""
    import time

    import jax

    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    print(f"{label}: {time.perf_counter() - start:.2f}s")
    return out
