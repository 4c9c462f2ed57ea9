"""Helpers for parity tests against PyTorch references: perturbation, saving, and the tolerance check."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ATOL = 1e-4
REL = 1e-5


def perturb_(module, seed: int = 0, gamma_range: tuple[float, float] = (0.5, 1.0)) -> None:
    """Make a random-init torch reference informative: shift every bias, norm affine and BN statistic,
    and draw layer-scale gammas from `gamma_range` (random init hides bugs: zero biases, unit norms, gamma 1e-5)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(module.state_dict(keep_vars=True).items()):
            if not tensor.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            noise = torch.randn(tensor.shape, generator=g, dtype=tensor.dtype)
            if leaf in ("gamma", "gamma_1", "gamma_2") or name.endswith("ls1.gamma") or name.endswith("ls2.gamma"):
                lo, hi = gamma_range
                tensor.copy_(lo + (hi - lo) * torch.rand(tensor.shape, generator=g, dtype=tensor.dtype))
            elif leaf == "running_var":
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=g, dtype=tensor.dtype))
            elif leaf == "running_mean" or leaf == "bias" or leaf.endswith("_bias"):
                tensor.add_(0.1 * noise)
            elif leaf == "weight" and tensor.ndim == 1:
                tensor.add_(0.1 * noise)
            elif leaf in ("relative_position_bias_table", "cls_token", "reg_token", "pos_embed", "storage_tokens"):
                tensor.add_(0.1 * noise)


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
