"""2x2 / stride-2 max pooling with indices and max unpooling with PyTorch semantics (NHWC).

Indices are kept per output position as the window offset ``0..3`` (int8) in row-major order
``(0, 0), (0, 1), (1, 0), (1, 1)``; the first maximum in that order wins, as in ``F.max_pool2d``.
``torch_flat_indices`` converts them to PyTorch's ``h * W + w`` indices.
"""

import jax
import jax.numpy as jnp

WINDOW = 2


def _windows(x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    out_height, out_width = height // WINDOW, width // WINDOW
    x = x[:, : out_height * WINDOW, : out_width * WINDOW]
    x = x.reshape(batch, out_height, WINDOW, out_width, WINDOW, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, out_height, out_width, WINDOW * WINDOW, channels)


def max_pool_with_indices(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``F.max_pool2d(x, 2, 2, return_indices=True)``: returns (pooled, window offsets in 0..3 as int8).

    Odd sizes are floored (the last row/column is dropped), as in PyTorch.
    """
    windows = _windows(x)
    window_index = jnp.argmax(windows, axis=3)
    pooled = jnp.take_along_axis(windows, window_index[:, :, :, None, :], axis=3)[:, :, :, 0, :]
    return pooled, window_index.astype(jnp.int8)


def torch_flat_indices(window_index: jax.Array, input_width: int) -> jax.Array:
    """PyTorch's ``return_indices`` values (``h * input_width + w`` per channel) from window offsets (NHWC, int32)."""
    _, out_height, out_width, _ = window_index.shape
    offset = window_index.astype(jnp.int32)
    rows = WINDOW * jnp.arange(out_height, dtype=jnp.int32)[:, None, None] + offset // WINDOW
    cols = WINDOW * jnp.arange(out_width, dtype=jnp.int32)[None, :, None] + offset % WINDOW
    return rows * input_width + cols


def max_unpool(x: jax.Array, window_index: jax.Array, output_size: tuple[int, int] | None = None) -> jax.Array:
    """``F.max_unpool2d(x, indices, 2, 2, output_size=output_size)`` from window offsets.

    ``output_size`` (H, W) defaults to twice the pooled size; a larger one (an odd encoder size) is zero-filled at the
    bottom/right.
    """
    batch, height, width, channels = x.shape
    full_height, full_width = WINDOW * height, WINDOW * width
    out_height, out_width = output_size if output_size is not None else (full_height, full_width)
    if out_height < full_height or out_width < full_width:
        raise ValueError(f"output_size {(out_height, out_width)} is smaller than {(full_height, full_width)}")
    selected = window_index[:, :, :, None, :] == jnp.arange(WINDOW * WINDOW, dtype=window_index.dtype)[:, None]
    windows = jnp.where(selected, x[:, :, :, None, :], jnp.zeros((), x.dtype))
    out = windows.reshape(batch, height, width, WINDOW, WINDOW, channels).transpose(0, 1, 3, 2, 4, 5)
    out = out.reshape(batch, full_height, full_width, channels)
    return jnp.pad(out, ((0, 0), (0, out_height - full_height), (0, out_width - full_width), (0, 0)))
