"""The DINOv3 matting boundary term (dinov3_matting.md §5) against a direct PyTorch evaluation (float64, NCHW)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxmatte import losses

SHAPE = (2, 41, 37, 1)


def t(x: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).double().permute(0, 3, 1, 2).contiguous().requires_grad_(grad)


def t_boundary(p, g, weight=5.0, threshold=0.01, kernel_size=3):
    kernel = torch.ones(1, 1, kernel_size, kernel_size, dtype=g.dtype) / kernel_size**2
    mean = F.conv2d(g, kernel, padding=kernel_size // 2)
    variance = F.conv2d(g * g, kernel, padding=kernel_size // 2) - mean**2
    mask = (variance > threshold).double()
    return (F.smooth_l1_loss(p, g, reduction="none") * (1 + weight * mask)).mean()


def t_total(p, g, w_boundary):
    def conv(x, k):
        return F.conv2d(x, torch.tensor(k, dtype=x.dtype)[None, None], padding=1)

    sx = [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]
    sy = [[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]]
    lap = [[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]]

    def magnitude(x):
        return torch.sqrt(conv(x, sx) ** 2 + conv(x, sy) ** 2 + 1e-8)

    gradient = 0.0
    for s in (1, 2, 4):
        ps, gs = (p, g) if s == 1 else (F.avg_pool2d(p, s), F.avg_pool2d(g, s))
        w = torch.exp(magnitude(gs))
        gradient = gradient + (magnitude(ps) * w - magnitude(gs) * w).abs().mean() / s
    charbonnier = torch.sqrt((p - g) ** 2 + 1e-6).mean()
    laplacian = (conv(p, lap) - conv(g, lap)).abs().mean()
    return charbonnier + 0.5 * gradient / 3 + 0.1 * laplacian + w_boundary * t_boundary(p, g)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    target = rng.uniform(size=SHAPE)
    target[:, 4:20, 6:25] = 1.0  # flat regions: variance 0 inside, > 0.01 along their borders
    target[:, 25:, 20:] = 0.0
    target[:, 30:34, :10] = 0.5 + 0.02 * rng.standard_normal((2, 4, 10, 1))  # soft, low variance: below threshold
    prob = 1.0 / (1.0 + np.exp(-3.0 * rng.standard_normal(SHAPE)))
    prob[:, 6:10, 8:12] = 1.0  # ties with the target
    prob[:, 27:, 22:] = 1.0  # |p - g| = 1: the edge of smooth-L1's quadratic branch
    wide = 2.5 * rng.standard_normal(SHAPE)  # |p - g| > 1: the linear branch
    return {"target": target.astype(np.float32), "prob": prob.astype(np.float32), "wide": wide.astype(np.float32)}


def _check(ours_value, ours_grad, ref_value, ref_grad):
    assert np.asarray(ours_value).dtype == np.float32
    assert abs(float(ours_value) - float(ref_value)) <= 1e-6 * max(1.0, abs(float(ref_value)))
    ref_grad = ref_grad.detach().permute(0, 2, 3, 1).numpy()
    scale = np.abs(ref_grad).max()
    assert scale > 0
    assert np.abs(np.asarray(ours_grad, np.float64) - ref_grad).max() <= 1e-5 * scale


@pytest.mark.parametrize(
    ("pred_key", "kwargs"),
    [("prob", {}), ("wide", {}), ("prob", {"weight": 2.0, "threshold": 0.05, "kernel_size": 5})],
    ids=["prob", "linear-branch", "options"],
)
def test_boundary_value_and_gradient(data, pred_key, kwargs):
    pred, target = data[pred_key], data["target"]
    value, grad = jax.value_and_grad(lambda p: losses.boundary(p, jnp.asarray(target), **kwargs))(jnp.asarray(pred))
    pred_t = t(pred, grad=True)
    ref = t_boundary(pred_t, t(target), **kwargs)
    ref.backward()
    _check(value, grad, ref.item(), pred_t.grad)
    # the mask matters: without the boundary weight the value differs clearly
    assert (
        abs(
            float(losses.boundary(pred, target, weight=0.0, **{k: v for k, v in kwargs.items() if k != "weight"}))
            - float(value)
        )
        > 1e-3
    )


def test_boundary_mask_covers_edges_only(data):
    """A zero target has no boundary; a block target weights the pixels whose 3x3 window crosses its edge."""
    zeros = np.zeros((1, 8, 8, 1), np.float32)
    np.testing.assert_allclose(float(losses.boundary(zeros + 0.2, zeros)), 0.5 * 0.2**2, rtol=1e-6)
    # the zero padding marks the 28 border pixels of a constant-one target, as in the original
    ones = np.ones((1, 8, 8, 1), np.float32)
    expected = 0.5 * 0.2**2 * (28 * 6.0 + 36) / 64
    np.testing.assert_allclose(float(losses.boundary(ones - 0.2, ones)), expected, rtol=1e-6)
    block = np.zeros((1, 10, 10, 1), np.float32)
    block[:, 3:7, 3:7] = 1.0
    pred = np.full_like(block, 0.5)
    # marked: the 6x6 ring rows/cols 2..7 around the block, minus its 2x2 core whose 3x3 windows are all ones
    marked = 36 - 4
    expected = 0.5 * 0.25 * (marked * 6.0 + (100 - marked)) / 100
    np.testing.assert_allclose(float(losses.boundary(pred, block)), expected, rtol=1e-6)


def test_dinov3_total_with_boundary(data):
    prob, target = data["prob"], data["target"]
    pred_t = t(prob, grad=True)
    ref = t_total(pred_t, t(target), 0.7)
    ref.backward()
    (total, terms), grad = jax.value_and_grad(
        lambda p: losses.dinov3_matting_loss(p, jnp.asarray(target), w_boundary=0.7), has_aux=True
    )(jnp.asarray(prob))
    _check(total, grad, ref.item(), pred_t.grad)
    assert set(terms) == {"charbonnier", "gradient", "laplacian", "boundary", "total"}
    _, default_terms = losses.dinov3_matting_loss(prob, target)
    assert "boundary" not in default_terms  # default weight 0: the original recipe, unchanged
    np.testing.assert_allclose(
        float(total - default_terms["total"]), 0.7 * float(terms["boundary"]), rtol=1e-5, atol=1e-7
    )
