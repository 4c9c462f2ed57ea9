"""Spatial resizing with the semantics of ``torch.nn.functional.interpolate`` (NHWC, ``antialias=False``).

Per-axis source indices and weights are built with NumPy at trace time in PyTorch's float precision (float32; float64
for float64 inputs) and applied as separable gathers, width first then height, like PyTorch's CPU kernel.
"""

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Mode = Literal["bilinear", "nearest", "nearest-exact"]
SizeLike = int | tuple[int, int]


def _pair(size: SizeLike) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _opmath_type(dtype: jnp.dtype) -> type[np.floating]:
    return np.float64 if jnp.dtype(dtype) == jnp.float64 else np.float32


def _axis_taps(
    in_size: int, out_size: int, *, mode: Mode, align_corners: bool = False, opmath: type[np.floating] = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights, each (taps, out_size), that PyTorch uses along one axis.

    ``output[j] = sum_t weights[t, j] * input[indices[t, j]]``; nearest modes have a single tap of weight 1.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    if align_corners and mode != "bilinear":
        raise ValueError("align_corners is only defined for bilinear resizing")
    if align_corners:
        scale = opmath(in_size - 1) / opmath(out_size - 1) if out_size > 1 else opmath(0)
    else:
        scale = opmath(in_size) / opmath(out_size)
    dst = np.arange(out_size).astype(opmath)
    last = in_size - 1

    if mode == "nearest":
        index = np.minimum(np.floor(dst * scale).astype(np.int64), last)
        return index[None], np.ones((1, out_size), opmath)
    if mode == "nearest-exact":
        index = np.minimum(np.floor((dst + opmath(0.5)) * scale).astype(np.int64), last)
        return index[None], np.ones((1, out_size), opmath)
    if mode != "bilinear":
        raise ValueError(f"unknown mode {mode!r}")

    if align_corners:
        source = scale * dst
    else:
        # PyTorch rounds twice: float(scale * (dst + 0.5)) - 0.5.
        scaled = (scale * (dst + opmath(0.5))).astype(opmath)
        source = np.maximum(scaled - opmath(0.5), opmath(0))
    low = np.minimum(np.floor(source).astype(np.int64), last)
    high_weight = np.clip(source - low.astype(opmath), opmath(0), opmath(1)).astype(opmath)
    high = low + (low < last)
    return np.stack([low, high]), np.stack([opmath(1) - high_weight, high_weight])


def _resize_axis(x: jax.Array, axis: int, indices: np.ndarray, weights: np.ndarray, interpolate: bool) -> jax.Array:
    if not interpolate:
        return jnp.take(x, jnp.asarray(indices[0], jnp.int32), axis=axis, mode="clip", indices_are_sorted=True)
    weight_shape = [1] * x.ndim
    weight_shape[axis] = indices.shape[1]
    out = None
    for tap_indices, tap_weights in zip(indices, weights, strict=True):
        gathered = jnp.take(x, jnp.asarray(tap_indices, jnp.int32), axis=axis, mode="clip", indices_are_sorted=True)
        term = gathered * jnp.asarray(tap_weights.reshape(weight_shape), x.dtype)
        out = term if out is None else out + term
    return out


def _resize(x: jax.Array, size: SizeLike, mode: Mode, align_corners: bool) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"expected an NHWC array, got shape {x.shape}")
    out_height, out_width = _pair(size)
    interpolate = mode == "bilinear"
    input_dtype = x.dtype
    if interpolate:
        if not jnp.issubdtype(input_dtype, jnp.floating):
            raise TypeError(f"bilinear resizing needs a floating input, got {input_dtype}")
        x = x.astype(jnp.promote_types(input_dtype, jnp.float32))
    opmath = _opmath_type(x.dtype)
    # Width first, then height: the same association order as PyTorch's CPU kernel.
    for axis, out_size in ((2, out_width), (1, out_height)):
        in_size = x.shape[axis]
        if in_size == out_size:
            continue
        indices, weights = _axis_taps(in_size, out_size, mode=mode, align_corners=align_corners, opmath=opmath)
        x = _resize_axis(x, axis, indices, weights, interpolate)
    return x.astype(input_dtype)


def resize_bilinear(x: jax.Array, size: SizeLike, *, align_corners: bool) -> jax.Array:
    """``F.interpolate(x, size, mode='bilinear', align_corners=align_corners)`` on an NHWC array.

    Weights are computed in float32 (float64 for float64 inputs); low-precision inputs are interpolated in float32 and
    cast back to their dtype.
    """
    return _resize(x, size, "bilinear", align_corners)


def resize_nearest(x: jax.Array, size: SizeLike) -> jax.Array:
    """``F.interpolate(x, size, mode='nearest')`` (legacy): ``src = min(floor(dst * (in / out)), in - 1)``."""
    return _resize(x, size, "nearest", False)


def resize_nearest_exact(x: jax.Array, size: SizeLike) -> jax.Array:
    """``F.interpolate(x, size, mode='nearest-exact')``: ``src = min(floor((dst + 0.5) * (in / out)), in - 1)``."""
    return _resize(x, size, "nearest-exact", False)
