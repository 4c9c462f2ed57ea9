"""Parity of jaxmatte.ops against the corresponding PyTorch operators."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from jaxmatte.ops import (
    ConvTranspose2d,
    conv_transpose,
    kernel_fan_in,
    max_pool_with_indices,
    max_unpool,
    resize_bilinear,
    resize_nearest,
    resize_nearest_exact,
    torch_bias_init,
    torch_flat_indices,
    torch_kernel_init,
)
from jaxmatte.ops.resize import _axis_taps

FP32_ATOL = 1e-5


def to_torch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()


def from_torch(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


def eager_and_jit(fn, *args):
    """Run ``fn`` eagerly and under ``jax.jit``; both results as NumPy arrays."""
    return np.asarray(fn(*args)), np.asarray(jax.jit(fn)(*args))


def random_nhwc(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


RESIZE_CASES = [
    # (batch, channels, input (H, W), output (H, W))
    (1, 2, (1024, 1024), (896, 896)),
    (1, 2, (896, 896), (1024, 1024)),
    (2, 3, (37, 64), (64, 37)),
    (2, 3, (64, 37), (37, 64)),
    (2, 3, (7, 7), (1, 1)),
    (2, 3, (1, 1), (5, 5)),
    (3, 2, (1, 7), (5, 1)),
    (2, 4, (13, 17), (26, 34)),
    (2, 3, (13, 17), (13, 40)),
    (1, 5, (9, 23), (23, 9)),
    # large downscales where PyTorch's two roundings of the source coordinate matter
    (1, 3, (1024, 768), (896, 896)),
    (1, 1, (300, 500), (1152, 1152)),
    (1, 1, (1536, 1536), (1000, 1000)),
]
RESIZE_IDS = [f"{c[2][0]}x{c[2][1]}->{c[3][0]}x{c[3][1]}" for c in RESIZE_CASES]


@pytest.mark.parametrize(("batch", "channels", "in_hw", "out_hw"), RESIZE_CASES, ids=RESIZE_IDS)
def test_resize_matches_torch(batch, channels, in_hw, out_hw):
    """Bilinear (both align_corners) within float rounding; nearest and nearest-exact exactly."""
    x = random_nhwc((batch, *in_hw, channels), seed=sum(in_hw) * 7 + sum(out_hw))
    xt = to_torch(x)
    expected = [
        from_torch(F.interpolate(xt, size=out_hw, mode="bilinear", align_corners=False)),
        from_torch(F.interpolate(xt, size=out_hw, mode="bilinear", align_corners=True)),
        from_torch(F.interpolate(xt, size=out_hw, mode="nearest")),
        from_torch(F.interpolate(xt, size=out_hw, mode="nearest-exact")),
    ]

    def resize_all(a):
        return (
            resize_bilinear(a, out_hw, align_corners=False),
            resize_bilinear(a, out_hw, align_corners=True),
            resize_nearest(a, out_hw),
            resize_nearest_exact(a, out_hw),
        )

    for results in (resize_all(x), jax.jit(resize_all)(x)):
        results = [np.asarray(r) for r in results]
        for result, reference in zip(results[:2], expected[:2], strict=True):
            assert result.shape == reference.shape and result.dtype == np.float32
            np.testing.assert_allclose(result, reference, rtol=0, atol=FP32_ATOL)
        for result, reference in zip(results[2:], expected[2:], strict=True):
            np.testing.assert_array_equal(result, reference)


@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
def test_nearest_index_table_sweep(mode):
    """torch's legacy nearest and nearest-exact source indices for many ratios (the per-axis table the ops gather)."""
    sizes = (1, 2, 3, 5, 7, 10, 13, 31, 37, 64, 100, 129, 255, 448, 896, 1000, 1024, 1536)
    for in_size in sizes:
        probe = torch.arange(in_size, dtype=torch.float32).view(1, 1, 1, in_size)
        for out_size in sizes:
            expected = F.interpolate(probe, size=(1, out_size), mode=mode).view(-1).numpy().astype(np.int64)
            indices, weights = _axis_taps(in_size, out_size, mode=mode)
            np.testing.assert_array_equal(indices, expected[None], err_msg=f"{in_size} -> {out_size}")
            np.testing.assert_array_equal(weights, 1.0)


def test_resize_along_height_only():
    x = np.arange(2 * 5 * 3 * 2, dtype=np.float32).reshape(2, 5, 3, 2)
    for mode, resize in (("nearest", resize_nearest), ("nearest-exact", resize_nearest_exact)):
        expected = from_torch(F.interpolate(to_torch(x), size=(8, 3), mode=mode))
        np.testing.assert_array_equal(np.asarray(resize(x, (8, 3))), expected)


def test_resize_nearest_preserves_integer_dtype():
    mask = np.random.default_rng(3).integers(0, 255, size=(2, 1024, 1024, 1), dtype=np.uint8)
    result = np.asarray(jax.jit(lambda m: resize_nearest(m, (896, 896)))(mask))
    expected = from_torch(F.interpolate(to_torch(mask), size=(896, 896), mode="nearest"))
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, expected)


def test_resize_int_size_and_identity():
    x = random_nhwc((2, 6, 6, 3), seed=5)
    np.testing.assert_array_equal(np.asarray(resize_bilinear(x, 6, align_corners=False)), x)
    expected = from_torch(F.interpolate(to_torch(x), size=4, mode="bilinear", align_corners=True))
    np.testing.assert_allclose(np.asarray(resize_bilinear(x, 4, align_corners=True)), expected, rtol=0, atol=FP32_ATOL)


def test_resize_bilinear_bf16():
    x = random_nhwc((2, 37, 64, 3), seed=11)

    def resize_both(a):
        return resize_bilinear(a, (64, 48), align_corners=False), resize_bilinear(a, (64, 48), align_corners=True)

    for reference, result in zip(resize_both(x), jax.jit(resize_both)(jnp.asarray(x, jnp.bfloat16)), strict=True):
        assert result.dtype == jnp.bfloat16
        reference = np.asarray(reference)
        relative = np.abs(np.asarray(result, np.float32) - reference).max() / np.abs(reference).max()
        assert 0 < relative < 1e-2


def test_resize_rejects_integer_bilinear():
    with pytest.raises(TypeError):
        resize_bilinear(np.zeros((1, 4, 4, 1), np.int32), (2, 2), align_corners=False)


CONV_TRANSPOSE_CASES = [
    # (kernel_size, stride, padding, output_padding, dilation, input (H, W))
    (2, 2, 0, 0, 1, (5, 7)),
    (4, 2, 1, 0, 1, (6, 5)),
    (3, 2, 1, 1, 1, (5, 8)),
    (3, 1, 1, 0, 1, (7, 4)),
    ((3, 2), (2, 1), (1, 0), (1, 0), 1, (4, 6)),
    (3, 2, 2, 1, 2, (5, 6)),
]
CONV_TRANSPOSE_IDS = ["k2s2p0", "k4s2p1", "k3s2p1op1", "k3s1p1", "k32s21p10op10", "k3s2p2op1d2"]


def torch_conv_transpose(in_ch, out_ch, kernel_size, stride, padding, output_padding, dilation, seed):
    torch.manual_seed(seed)
    layer = torch.nn.ConvTranspose2d(
        in_ch, out_ch, kernel_size, stride=stride, padding=padding, output_padding=output_padding, dilation=dilation
    )
    with torch.no_grad():
        layer.bias.normal_()
    return layer


@pytest.mark.parametrize(
    ("kernel_size", "stride", "padding", "output_padding", "dilation", "in_hw"),
    CONV_TRANSPOSE_CASES,
    ids=CONV_TRANSPOSE_IDS,
)
def test_conv_transpose_matches_torch(kernel_size, stride, padding, output_padding, dilation, in_hw):
    layer = torch_conv_transpose(4, 5, kernel_size, stride, padding, output_padding, dilation, seed=0)
    x = random_nhwc((2, *in_hw, 4), seed=1)
    with torch.no_grad():
        expected = from_torch(layer(to_torch(x)))
    kernel = layer.weight.detach().numpy().transpose(2, 3, 1, 0)
    bias = layer.bias.detach().numpy()

    def apply(a):
        return conv_transpose(
            a, kernel, bias, stride=stride, padding=padding, output_padding=output_padding, dilation=dilation
        )

    for result in eager_and_jit(apply, x):
        assert result.shape == expected.shape
        np.testing.assert_allclose(result, expected, rtol=0, atol=FP32_ATOL)


@pytest.mark.parametrize(
    ("kernel_size", "stride", "padding", "output_padding", "dilation", "in_hw"),
    CONV_TRANSPOSE_CASES[1:3],
    ids=CONV_TRANSPOSE_IDS[1:3],
)
def test_conv_transpose_module_with_torch_weights(kernel_size, stride, padding, output_padding, dilation, in_hw):
    """Load converted torch weights into an abstract module (as a checkpoint loader does) and compare outputs."""
    layer = torch_conv_transpose(3, 6, kernel_size, stride, padding, output_padding, dilation, seed=2)
    kernel = layer.weight.detach().numpy().transpose(2, 3, 1, 0)
    module = nnx.eval_shape(
        lambda: ConvTranspose2d(
            3,
            6,
            kernel_size,
            stride=stride,
            padding=padding,
            output_padding=output_padding,
            dilation=dilation,
            rngs=nnx.Rngs(0),
        )
    )
    assert module.kernel.shape == kernel.shape and module.bias.shape == (6,)
    module.kernel.set_value(jnp.asarray(kernel))
    module.bias.set_value(jnp.asarray(layer.bias.detach().numpy()))
    x = random_nhwc((2, *in_hw, 3), seed=3)
    with torch.no_grad():
        expected = from_torch(layer(to_torch(x)))
    np.testing.assert_allclose(np.asarray(module(x)), expected, rtol=0, atol=FP32_ATOL)
    np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, a: m(a))(module, x)), expected, rtol=0, atol=FP32_ATOL)


def test_conv_transpose_module_without_bias_and_bf16():
    kernel = jnp.asarray(random_nhwc((4, 4, 2, 4), seed=5))
    x = random_nhwc((1, 6, 5, 4), seed=4)
    outputs = []
    for dtype in (None, jnp.bfloat16):
        module = nnx.eval_shape(
            lambda dtype=dtype: ConvTranspose2d(
                4, 2, 4, stride=2, padding=1, use_bias=False, dtype=dtype, rngs=nnx.Rngs(1)
            )
        )
        assert module.bias is None
        module.kernel.set_value(kernel)
        outputs.append(module(x if dtype is None else jnp.asarray(x, dtype)))
    reference, result = outputs
    expected = conv_transpose(x, kernel, stride=2, padding=1)
    np.testing.assert_array_equal(np.asarray(reference), np.asarray(expected))
    assert reference.shape == (1, 12, 10, 2) and reference.dtype == jnp.float32
    assert result.dtype == jnp.bfloat16
    relative = np.abs(np.asarray(result, np.float32) - np.asarray(reference)).max() / np.abs(reference).max()
    assert 0 < relative < 1e-2


def test_conv_transpose_rejects_bad_output_padding():
    with pytest.raises(ValueError):
        conv_transpose(
            np.zeros((1, 3, 3, 2), np.float32), np.zeros((3, 3, 4, 2), np.float32), stride=1, output_padding=1
        )


def pool_input(kind: str, hw: tuple[int, int]) -> np.ndarray:
    if kind == "normal":
        return random_nhwc((2, *hw, 3), seed=hw[0] * 10 + hw[1])
    if kind == "relu":
        return np.maximum(random_nhwc((2, *hw, 4), seed=7) - 0.8, 0.0)
    values = np.random.default_rng(8).integers(0, 3, size=(3, *hw, 5)).astype(np.float32)
    return values if kind == "integer" else -values


POOL_CASES = [
    ("normal", (8, 6)),
    ("normal", (7, 9)),
    ("relu", (7, 9)),
    ("integer", (9, 7)),
    ("negative-integer", (8, 10)),
]


@pytest.mark.parametrize(("kind", "hw"), POOL_CASES, ids=[f"{k}-{h}x{w}" for k, (h, w) in POOL_CASES])
def test_max_pool_and_unpool_match_torch(kind, hw):
    """Pooled values, torch flat indices (first maximum wins on ties) and unpooling to an odd size, exactly."""
    x = pool_input(kind, hw)
    height, width = hw
    expected_pooled, expected_indices = F.max_pool2d(to_torch(x), 2, 2, return_indices=True)
    expected_unpooled = F.max_unpool2d(expected_pooled, expected_indices, 2, 2, output_size=(height, width))
    unpool = jax.jit(max_unpool, static_argnums=2)
    flat_indices = jax.jit(torch_flat_indices, static_argnums=1)
    for pool in (max_pool_with_indices, jax.jit(max_pool_with_indices)):
        pooled, window_index = pool(x)
        np.testing.assert_array_equal(np.asarray(pooled), from_torch(expected_pooled))
        np.testing.assert_array_equal(np.asarray(flat_indices(window_index, width)), from_torch(expected_indices))
        np.testing.assert_array_equal(
            np.asarray(unpool(pooled, window_index, (height, width))), from_torch(expected_unpooled)
        )
    if kind != "normal":
        assert tied_window_count(x) > 0


def tied_window_count(x: np.ndarray) -> int:
    batch, height, width, channels = x.shape
    windows = x[:, : height // 2 * 2, : width // 2 * 2].reshape(batch, height // 2, 2, width // 2, 2, channels)
    is_max = windows == windows.max(axis=(2, 4), keepdims=True)
    return int((is_max.sum(axis=(2, 4)) > 1).sum())


def test_max_pool_window_index_convention():
    x = np.array([[1.0, 5.0], [5.0, 2.0]], np.float32).reshape(1, 2, 2, 1)
    pooled, window_index = max_pool_with_indices(x)
    assert float(pooled[0, 0, 0, 0]) == 5.0
    assert int(window_index[0, 0, 0, 0]) == 1
    np.testing.assert_array_equal(np.asarray(max_unpool(pooled, window_index)), [[[[0.0], [5.0]], [[0.0], [0.0]]]])


def test_max_pool_and_unpool_gradients_match_torch():
    x = np.maximum(random_nhwc((2, 7, 9, 3), seed=9) - 0.5, 0.0)
    upstream = random_nhwc((2, 7, 9, 3), seed=10)

    def loss(a):
        pooled, window_index = max_pool_with_indices(a)
        return jnp.sum(max_unpool(pooled * pooled, window_index, (7, 9)) * upstream)

    grad = np.asarray(jax.jit(jax.grad(loss))(x))
    xt = to_torch(x).requires_grad_(True)
    pooled, indices = F.max_pool2d(xt, 2, 2, return_indices=True)
    (F.max_unpool2d(pooled * pooled, indices, 2, 2, output_size=(7, 9)) * to_torch(upstream)).sum().backward()
    np.testing.assert_allclose(grad, from_torch(xt.grad), rtol=0, atol=FP32_ATOL)


def test_max_unpool_rejects_small_output():
    pooled, window_index = max_pool_with_indices(random_nhwc((1, 6, 6, 1), seed=0))
    with pytest.raises(ValueError):
        max_unpool(pooled, window_index, (5, 6))


def torch_layers() -> list[tuple[torch.nn.Module, tuple[int, ...]]]:
    """torch layers with default init and the NNX kernel shape of each (port transform applied)."""
    layers = [
        torch.nn.Linear(96, 80),
        torch.nn.Conv2d(24, 64, 3),
        torch.nn.Conv2d(24, 48, (3, 5), groups=4),
        torch.nn.ConvTranspose2d(96, 40, 4),
    ]
    shapes = [
        tuple(layers[0].weight.T.shape),
        tuple(layers[1].weight.permute(2, 3, 1, 0).shape),
        tuple(layers[2].weight.permute(2, 3, 1, 0).shape),
        tuple(layers[3].weight.permute(2, 3, 1, 0).shape),
    ]
    return list(zip(layers, shapes, strict=True))


def test_kernel_fan_in_matches_torch():
    for layer, nnx_shape in torch_layers():
        torch_fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(layer.weight)
        assert kernel_fan_in(nnx_shape) == torch_fan_in, type(layer).__name__


def test_initialisers_match_torch_distribution():
    """Kernel and bias samples are U(-1/sqrt(fan_in), 1/sqrt(fan_in)), like a default-initialised torch layer."""
    torch.manual_seed(0)
    layer = torch.nn.ConvTranspose2d(96, 40, 4, stride=2, padding=1)
    module = ConvTranspose2d(96, 40, 4, stride=2, padding=1, rngs=nnx.Rngs(0))
    fan_in = torch.nn.init._calculate_fan_in_and_fan_out(layer.weight)[0]
    bound = 1.0 / math.sqrt(fan_in)
    kernel = np.asarray(module.kernel[...])
    bias = np.asarray(torch_bias_init(fan_in)(jax.random.key(1), (4096,), jnp.float32))
    torch_weight = layer.weight.detach().numpy()
    assert kernel.shape == (4, 4, 40, 96) and kernel.dtype == np.float32
    assert np.abs(torch_weight).max() <= bound and np.abs(layer.bias.detach().numpy()).max() <= bound
    assert np.abs(np.asarray(module.bias[...])).max() <= bound
    for sample in (kernel, bias):
        assert np.abs(sample).max() <= bound
        assert np.abs(sample).max() > 0.98 * bound
        assert abs(sample.std() / (bound / math.sqrt(3)) - 1) < 0.05
        assert abs(sample.mean()) < 0.05 * bound
    assert abs(kernel.std() / torch_weight.std() - 1) < 0.02
    assert abs(np.abs(kernel).max() / np.abs(torch_weight).max() - 1) < 0.01
    half = jax.eval_shape(lambda key: torch_kernel_init(key, (3, 3, 8, 16), jnp.bfloat16), jax.random.key(2))
    assert half.shape == (3, 3, 8, 16) and half.dtype == jnp.bfloat16
