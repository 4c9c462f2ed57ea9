"""Transposed convolution with the semantics of ``torch.nn.ConvTranspose2d`` (NHWC, groups = 1)."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from jaxmatte.ops.init import kernel_fan_in, torch_bias_init, torch_kernel_init

IntPair = int | Sequence[int]


def _pair(value: IntPair, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {value!r}")
    return pair


def conv_transpose(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    stride: IntPair,
    padding: IntPair = 0,
    output_padding: IntPair = 0,
    dilation: IntPair = 1,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
    """``F.conv_transpose2d`` on NHWC ``x`` with ``kernel`` (kh, kw, out, in) = torch weight ``.transpose(2, 3, 1, 0)``.

    Output size per axis: ``(i - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1``.
    """
    strides = _pair(stride, "stride")
    paddings = _pair(padding, "padding")
    output_paddings = _pair(output_padding, "output_padding")
    dilations = _pair(dilation, "dilation")
    if kernel.ndim != 4 or x.ndim != 4:
        raise ValueError(f"expected NHWC input and (kh, kw, out, in) kernel, got {x.shape} and {kernel.shape}")
    if x.shape[-1] != kernel.shape[3]:
        raise ValueError(f"input has {x.shape[-1]} channels, kernel expects {kernel.shape[3]}")
    for s, d, op in zip(strides, dilations, output_paddings, strict=True):
        if not 0 <= op < max(s, d):
            raise ValueError(f"output_padding {op} must be smaller than stride {s} or dilation {d}")
    lax_padding = []
    for k, p, op, d in zip(kernel.shape[:2], paddings, output_paddings, dilations, strict=True):
        span = d * (k - 1)
        lax_padding.append((span - p, span - p + op))
    dtype = jnp.promote_types(x.dtype, kernel.dtype)
    out = jax.lax.conv_transpose(
        x.astype(dtype),
        kernel.astype(dtype),
        strides,
        lax_padding,
        rhs_dilation=dilations,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        transpose_kernel=True,
        precision=precision,
    )
    if bias is not None:
        out = out + bias.astype(dtype)
    return out


class ConvTranspose2d(nnx.Module):
    """``torch.nn.ConvTranspose2d`` (groups = 1) as an NNX layer on NHWC inputs.

    Params: ``kernel`` (kh, kw, out, in) and ``bias`` (out,). Port from torch: ``kernel = weight.transpose(2, 3, 1, 0)``
    (torch weight is (in, out, kh, kw)), ``bias = bias``. Default init reproduces torch's distributions:
    U(±1/sqrt(out * kh * kw)) for both.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: IntPair,
        *,
        stride: IntPair,
        padding: IntPair = 0,
        output_padding: IntPair = 0,
        dilation: IntPair = 1,
        use_bias: bool = True,
        dtype: jnp.dtype | None = None,
        param_dtype: jnp.dtype = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        rngs: nnx.Rngs,
    ):
        kernel_shape = (*_pair(kernel_size, "kernel_size"), out_features, in_features)
        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = kernel_shape[:2]
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.output_padding = _pair(output_padding, "output_padding")
        self.dilation = _pair(dilation, "dilation")
        self.dtype = dtype
        self.precision = precision
        self.kernel = nnx.Param(torch_kernel_init(rngs.params(), kernel_shape, param_dtype))
        if use_bias:
            bias_init = torch_bias_init(kernel_fan_in(kernel_shape))
            self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype))
        else:
            self.bias = nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        bias = self.bias[...] if self.bias is not None else None
        x, kernel, bias = dtypes.promote_dtype((x, self.kernel[...], bias), dtype=self.dtype)
        return conv_transpose(
            x,
            kernel,
            bias,
            stride=self.stride,
            padding=self.padding,
            output_padding=self.output_padding,
            dilation=self.dilation,
            precision=self.precision,
        )
