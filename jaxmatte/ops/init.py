"""PyTorch default initialisers for NNX kernels and biases.

PyTorch initialises ``nn.Linear``, ``nn.Conv2d`` and ``nn.ConvTranspose2d`` weights with
``kaiming_uniform_(a=sqrt(5))``, i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and biases with the same bound. These
initialisers reproduce those *distributions* (not PyTorch's random stream) and follow the ``nnx.Param`` initialiser
signature ``(key, shape, dtype)``.

In every NNX kernel layout the torch ``fan_in`` is the product of all but the last axis:

- linear ``(in, out)``: ``in``;
- conv ``(kh, kw, in / groups, out)``: ``in / groups * kh * kw``;
- transposed conv ``(kh, kw, out, in)`` (torch ``(in, out, kh, kw)`` transposed by ``(2, 3, 1, 0)``): ``out * kh * kw``,
  which is torch's ``weight.size(1) * kh * kw``.
"""

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]


def kernel_fan_in(shape: Sequence[int]) -> int:
    """torch's ``fan_in`` for an NNX kernel of ``shape`` (product of all axes but the last)."""
    return math.prod(shape[:-1])


def _uniform(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype, bound: float) -> jax.Array:
    return jax.random.uniform(key, tuple(shape), dtype, minval=-bound, maxval=bound)


def _bound(fan_in: int) -> float:
    return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0


def torch_kernel_init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """PyTorch's default Linear/Conv/ConvTranspose weight distribution U(±1/sqrt(fan_in)) for an NNX kernel."""
    return _uniform(key, shape, dtype, _bound(kernel_fan_in(shape)))


def torch_bias_init(fan_in: int) -> Initializer:
    """PyTorch's default bias distribution U(±1/sqrt(fan_in)); ``fan_in`` is that of the layer's kernel."""

    def init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        return _uniform(key, shape, dtype, _bound(fan_in))

    return init
