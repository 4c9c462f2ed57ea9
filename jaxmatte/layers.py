"""Small NNX layers shared by the backbones, with PyTorch numerics (exact GELU, explicit eps, two-pass variance)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Dtype = Any
DEFAULT_KERNEL_INIT = nnx.initializers.lecun_normal()


def gelu(x: jax.Array) -> jax.Array:
    """PyTorch `nn.GELU()` (erf form)."""
    return jax.nn.gelu(x, approximate=False)


def layer_norm(dim: int, eps: float, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm with an explicit epsilon and PyTorch's two-pass variance."""
    return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def linear(
    in_features: int, out_features: int, *, use_bias: bool = True, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs
) -> nnx.Linear:
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        kernel_init=nnx.initializers.truncated_normal(0.02),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def patch_conv(
    in_chans: int,
    dim: int,
    patch_size: int,
    *,
    kernel_init: nnx.Initializer = DEFAULT_KERNEL_INIT,
    dtype: Dtype,
    param_dtype: Dtype,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """Patch embedding: Conv kernel = stride = `patch_size`, no padding (PyTorch `patch_embed.proj`)."""
    return nnx.Conv(
        in_chans,
        dim,
        kernel_size=(patch_size, patch_size),
        strides=(patch_size, patch_size),
        padding="VALID",
        kernel_init=kernel_init,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class Mlp(nnx.Module):
    """fc1 -> GELU -> fc2, PyTorch key names `fc1`, `fc2`."""

    def __init__(self, dim: int, hidden: int, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
        self.fc1 = linear(dim, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc2 = linear(hidden, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(gelu(self.fc1(x)))


class SwiGLU(nnx.Module):
    """fc2(silu(fc1_g x) * fc1_x x), PyTorch key names `fc1_g`, `fc1_x`, `fc2`."""

    def __init__(self, dim: int, hidden: int, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
        self.fc1_g = linear(dim, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1_x = linear(dim, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc2 = linear(hidden, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.silu(self.fc1_g(x)) * self.fc1_x(x))


class DropPath(nnx.Module):
    """Stochastic depth per sample (timm `DropPath`, scaled by 1/keep). Identity in eval mode or at rate 0."""

    def __init__(self, rate: float, *, rngs: nnx.Rngs):
        self.rate = float(rate)
        self.deterministic = False
        self.rngs = rngs["dropout"].fork() if self.rate > 0 else nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.rngs(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / keep, jnp.zeros((), x.dtype))


def attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """softmax(q kᵀ / sqrt(d) + bias) v over (..., heads, tokens, head_dim); the softmax runs in float32."""
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("...hqd,...hkd->...hqk", q * jnp.asarray(scale, q.dtype), k).astype(jnp.float32)
    if bias is not None:
        logits = logits + bias
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("...hqk,...hkd->...hqd", weights, v)
