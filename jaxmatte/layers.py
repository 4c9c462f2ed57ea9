"""Small NNX layers shared by the backbones, decoders and necks, with PyTorch numerics (exact GELU, explicit eps,
two-pass variance; `conv` / `batch_norm` / `ConvBN` follow `nn.Conv2d` / `nn.BatchNorm2d` defaults)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmatte.ops import torch_bias_init, torch_kernel_init

Dtype = Any
DEFAULT_KERNEL_INIT = nnx.initializers.lecun_normal()
BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # Flax convention: PyTorch's momentum 0.1
CONV_INITS = ("torch", "kaiming")  # PyTorch's Conv2d defaults; kaiming-normal fan_out (ReLU gain) with zero bias
KAIMING_FAN_OUT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def gelu(x: jax.Array) -> jax.Array:
    """PyTorch `nn.GELU()` (erf form)."""
    return jax.nn.gelu(x, approximate=False)


def layer_norm(dim: int, eps: float, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm with an explicit epsilon and PyTorch's two-pass variance."""
    return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def group_norm(features: int, groups: int = 1, eps: float = 1e-5, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
    """`nn.GroupNorm(groups, features)`: statistics per sample over (H, W, channels of the group), per-channel affine;
    `groups=1` normalises over (H, W, C) as ViTDet / SimpleFPN necks do."""
    return nnx.GroupNorm(
        features,
        num_groups=groups,
        epsilon=eps,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


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


def conv(
    in_features: int,
    out_features: int,
    kernel: int,
    *,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    bias: bool,
    init: str = "torch",
    dtype: Dtype,
    param_dtype: Dtype,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """`nn.Conv2d` with explicit symmetric padding. `init="torch"`: PyTorch's default initial distributions;
    `"kaiming"`: `kaiming_normal_(mode="fan_out", nonlinearity="relu")` with zero bias, as many decoders reset them."""
    if init not in CONV_INITS:
        raise ValueError(f"unknown conv init {init!r}; known: {CONV_INITS}")
    kaiming = init == "kaiming"
    return nnx.Conv(
        in_features,
        out_features,
        (kernel, kernel),
        strides=stride,
        padding=((padding, padding), (padding, padding)),
        kernel_dilation=dilation,
        use_bias=bias,
        kernel_init=KAIMING_FAN_OUT if kaiming else torch_kernel_init,
        bias_init=nnx.initializers.zeros_init() if kaiming else torch_bias_init(in_features * kernel * kernel),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def batch_norm(features: int, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """`nn.BatchNorm2d` defaults; running averages after `eval()`, batch statistics after `train()`."""
    return nnx.BatchNorm(
        features,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPS,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class FrozenBatchNorm(nnx.Module):
    """BatchNorm that normalises with its stored statistics (unaffected by `train()`); float32 arithmetic.

    While `calibrating` (set only by the teacher's mask pretraining) it normalises with the batch statistics and
    updates the stored ones as PyTorch does (momentum 0.1, unbiased variance).
    """

    def __init__(self, features: int, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs | None = None):
        del rngs
        self.dtype = dtype
        self.calibrating = False
        self.scale = nnx.Param(jnp.ones((features,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((features,), param_dtype))
        self.mean = nnx.BatchStat(jnp.zeros((features,), param_dtype))
        self.var = nnx.BatchStat(jnp.ones((features,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self._normalize(x, batch_statistics=self.calibrating)

    def _normalize(self, x: jax.Array, *, batch_statistics: bool) -> jax.Array:
        f32 = jnp.float32
        x32 = x.astype(f32)
        if batch_statistics:
            axes = tuple(range(x.ndim - 1))
            mean, var = jnp.mean(x32, axis=axes), jnp.var(x32, axis=axes)
            count = x32.size // x32.shape[-1]
            keep = BN_MOMENTUM
            self.mean[...] = keep * self.mean[...] + (1 - keep) * jax.lax.stop_gradient(mean)
            unbiased = jax.lax.stop_gradient(var) * count / max(count - 1, 1)
            self.var[...] = keep * self.var[...] + (1 - keep) * unbiased
        else:
            mean, var = self.mean[...].astype(f32), self.var[...].astype(f32)
        factor = jax.lax.rsqrt(var + BN_EPS) * self.scale[...].astype(f32)
        y = (x32 - mean) * factor + self.bias[...].astype(f32)
        return y.astype(self.dtype or x.dtype)


class TorchBatchNorm(FrozenBatchNorm):
    """`nn.BatchNorm2d` exactly: batch statistics with PyTorch's running update (momentum 0.1, unbiased variance) in
    training mode, the stored statistics after `eval()` (nnx's `use_running_average`); float32 arithmetic."""

    def __init__(self, features: int, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs | None = None):
        super().__init__(features, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.use_running_average = False

    def __call__(self, x: jax.Array) -> jax.Array:
        return self._normalize(x, batch_statistics=not self.use_running_average)


class ConvBN(nnx.Module):
    """Conv (bias optional) -> BN [-> ReLU]: PyTorch `Sequential(Conv2d, BatchNorm2d, ReLU)` entries `.0`, `.1`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = False,
        init: str = "torch",
        dtype: Dtype,
        param_dtype: Dtype,
        rngs: nnx.Rngs,
    ):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        geometry = {"stride": stride, "padding": padding, "dilation": dilation}
        self.conv = conv(in_features, out_features, kernel, **geometry, bias=bias, init=init, **kw)
        self.bn = batch_norm(out_features, **kw)

    def __call__(self, x: jax.Array, *, relu: bool = True) -> jax.Array:
        x = self.bn(self.conv(x))
        return jax.nn.relu(x) if relu else x
