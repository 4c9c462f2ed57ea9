"""Matting Prune losses (dim_prune.md §5) against direct PyTorch evaluations (NCHW, float64) written from the spec."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxmatte import losses

# Teacher widths and odd spatial sizes standing in for down2..down5.
TEACHER_WIDTHS = (8, 16, 12, 12)
SPATIAL = ((10, 9), (5, 4), (3, 2), (2, 3))
STUDENT_WIDTHS = (3, 7, 5, 4)


def nhwc_to_nchw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2))).double()


def features(seed: int, widths, batch: int = 2, positive: bool = True) -> list[np.ndarray]:
    """Random NHWC maps at `SPATIAL`; `positive` ones look post-ReLU but have no all-zero column (see the last test)."""
    rng = np.random.default_rng(seed)
    maps = [rng.standard_normal((batch, h, w, c)).astype(np.float32) for (h, w), c in zip(SPATIAL, widths, strict=True)]
    return [np.abs(m) + np.float32(0.01) if positive else m for m in maps]


# ------------------------------------------------------------------------------------ torch reference (spec §5)


def t_alpha_loss(pred, target, mask):
    diff = (pred - target) * mask
    return torch.sum(torch.sqrt(diff**2 + 1e-12)) / (torch.sum(mask) + 1e-6)


def t_spatial(fm: torch.Tensor) -> torch.Tensor:
    """B x HW x HW from an NCHW map: columns normalised over C (sqrt of the sum of squares, + 1e-7)."""
    x = fm.reshape(fm.shape[0], fm.shape[1], -1)
    x = x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + 1e-7)
    return x.transpose(1, 2) @ x


def t_channel(fm: torch.Tensor) -> torch.Tensor:
    """B x C x C from an NCHW map: channels normalised over HW (+ 1e-7)."""
    x = fm.reshape(fm.shape[0], fm.shape[1], -1)
    x = x / (torch.sqrt(torch.sum(x**2, dim=2, keepdim=True)) + 1e-7)
    return x @ x.transpose(1, 2)


def t_spkd(teacher, student, channel=None, *, sum_all: bool):
    """DCP's loop; ``sum_all=False`` keeps its assignment (only the last pair survives)."""
    channel = student if channel is None else channel
    loss = 0
    for t, s, c in zip(teacher, student, channel, strict=True):
        term = torch.mean((t_spatial(t) - t_spatial(s)) ** 2) + torch.mean((t_channel(t) - t_channel(c)) ** 2)
        loss = loss + term if sum_all else term
    return loss


def torch_grads(fn, *groups):
    """(value, [grad per tensor]) of fn over lists of numpy NHWC arrays, grads returned as NHWC numpy."""
    tensors = [[nhwc_to_nchw(a).requires_grad_(True) for a in group] for group in groups]
    value = fn(*tensors)
    value.backward()
    grads = [[np.zeros(t.shape) if t.grad is None else t.grad.numpy() for t in group] for group in tensors]
    grads = [[g.transpose(0, 2, 3, 1) for g in group] for group in grads]
    return value.item(), grads


def assert_close(actual, expected, rtol=2e-5, scale=None):
    """Relative closeness; `scale` (default: the largest |expected|) sets the absolute floor."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert np.all(np.isfinite(actual))
    scale = np.abs(expected).max() if scale is None else scale
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-12))


def assert_grads_close(grads, ref_grads, rtol=2e-5):
    """Per-map closeness with one absolute floor for the whole list (some maps get far smaller gradients)."""
    grads, ref_grads = list(grads), list(ref_grads)
    assert len(grads) == len(ref_grads)
    scale = max(float(np.abs(ref).max()) for ref in ref_grads)
    for grad, ref in zip(grads, ref_grads, strict=True):
        assert_close(grad, ref, rtol, scale)


# ------------------------------------------------------------------------------------------- alpha-prediction loss


@pytest.mark.parametrize("shape", [(2, 9, 11), (1, 7, 5, 1)])
def test_alpha_prediction_loss_matches_torch(shape):
    rng = np.random.default_rng(0)
    pred = rng.uniform(size=shape).astype(np.float32)
    target = rng.uniform(size=shape).astype(np.float32)
    target[..., :2] = pred[..., :2]  # exact zeros inside the mask: finite gradient 0 there
    mask = (rng.uniform(size=shape) < 0.4).astype(np.float32)
    value, grad = jax.value_and_grad(losses.alpha_prediction_loss)(jnp.asarray(pred), target, mask)
    tp = torch.from_numpy(pred).double().requires_grad_(True)
    ref = t_alpha_loss(tp, torch.from_numpy(target).double(), torch.from_numpy(mask).double())
    ref.backward()
    assert_close(value, ref.item())
    assert_close(grad, tp.grad.numpy())
    assert np.all(np.asarray(grad)[mask == 0] == 0.0)


def test_alpha_prediction_loss_counts_epsilon_outside_the_mask():
    pred = np.zeros((1, 4, 5), np.float32)
    mask = np.zeros_like(pred)
    mask[0, 0, :2] = 1.0
    target = pred.copy()
    target[0, 0, 0] = 0.5
    value = float(losses.alpha_prediction_loss(pred, target, mask))
    # 0.5 from the masked error, 19 pixels x sqrt(1e-12) = 1e-6 each elsewhere, over 2 + 1e-6.
    np.testing.assert_allclose(value, (0.5 + 19e-6) / (2 + 1e-6), rtol=1e-6)


def test_alpha_prediction_loss_target_and_mask_get_no_gradient():
    rng = np.random.default_rng(1)
    pred, target = rng.uniform(size=(2, 2, 6, 6)).astype(np.float32)
    mask = np.ones_like(pred)
    grad_target, grad_mask = jax.grad(losses.alpha_prediction_loss, argnums=(1, 2))(pred, target, mask)
    assert not np.any(np.asarray(grad_target)) and not np.any(np.asarray(grad_mask))
    with pytest.raises(ValueError, match="shapes differ"):
        losses.alpha_prediction_loss(pred, target[..., None], mask)


# ------------------------------------------------------------------------------------------------------- SPKD


def test_similarity_matrices_match_torch():
    fm = features(2, TEACHER_WIDTHS, positive=False)[0]
    spatial = np.asarray(losses.spkd_spatial_similarity(fm))
    channel = np.asarray(losses.spkd_channel_similarity(fm))
    assert spatial.shape == (2, 90, 90) and channel.shape == (2, 8, 8)
    assert_close(spatial, t_spatial(nhwc_to_nchw(fm)).numpy())
    assert_close(channel, t_channel(nhwc_to_nchw(fm)).numpy())
    # Normalised rows: unit diagonal (up to the 1e-7 in the denominator).
    np.testing.assert_allclose(np.diagonal(spatial, axis1=1, axis2=2), 1.0, atol=1e-5)


@pytest.mark.parametrize("mode", ["fixed", "faithful"])
def test_spkd_full_width_student_matches_torch(mode):
    teacher = features(3, TEACHER_WIDTHS)
    student = features(4, TEACHER_WIDTHS)
    value, grads = jax.jit(jax.value_and_grad(lambda s: losses.spkd_loss(teacher, s, mode=mode)))(student)
    teacher_t = [nhwc_to_nchw(t) for t in teacher]
    ref, (ref_grads,) = torch_grads(lambda s: t_spkd(teacher_t, s, sum_all=mode == "fixed"), student)
    assert_close(value, ref)
    assert_grads_close(grads, ref_grads)
    if mode == "faithful":  # only down5 is trained by the faithful loss
        assert all(not np.any(np.asarray(g)) for g in grads[:3]) and np.any(np.asarray(grads[3]))


def test_spkd_faithful_is_the_last_term_and_fixed_the_sum():
    teacher, student = features(5, TEACHER_WIDTHS), features(6, TEACHER_WIDTHS)
    terms = [float(jax.jit(losses.spkd_term)(t, s)) for t, s in zip(teacher, student, strict=True)]
    fixed = float(jax.jit(functools.partial(losses.spkd_loss, mode="fixed"))(teacher, student))
    faithful = float(jax.jit(functools.partial(losses.spkd_loss, mode="faithful"))(teacher, student))
    np.testing.assert_allclose(fixed, sum(terms), rtol=1e-6)
    np.testing.assert_allclose(faithful, terms[-1], rtol=1e-6)
    assert fixed > faithful * 1.5  # the earlier layers matter


@pytest.mark.parametrize("mode", ["fixed", "faithful"])
def test_spkd_pruned_student_with_channel_projections_matches_torch(mode):
    teacher = features(7, TEACHER_WIDTHS)
    student = features(8, STUDENT_WIDTHS)  # pruned widths: spatial similarity only
    projected = features(9, TEACHER_WIDTHS, positive=False)  # 1x1 projections to the teacher widths

    def loss(s, c):
        return losses.spkd_loss(teacher, s, c, mode=mode)

    value, (grad_s, grad_c) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(student, projected)
    teacher_t = [nhwc_to_nchw(t) for t in teacher]
    ref, (ref_s, ref_c) = torch_grads(lambda s, c: t_spkd(teacher_t, s, c, sum_all=mode == "fixed"), student, projected)
    assert_close(value, ref)
    assert_grads_close([*grad_s, *grad_c], [*ref_s, *ref_c])
    # With projections the raw map enters only the spatial similarity: two extra zero channels change nothing.
    wider = [np.concatenate([s, np.zeros((*s.shape[:3], 2), np.float32)], axis=-1) for s in student]
    np.testing.assert_allclose(float(jax.jit(loss)(wider, projected)), float(value), rtol=1e-6)


def test_spkd_teacher_gets_no_gradient_and_zero_columns_stay_finite():
    teacher, student = features(10, TEACHER_WIDTHS), features(11, TEACHER_WIDTHS)
    student[0][0, 2, 3, :] = 0.0  # a position where every channel is 0 (dead after ReLU)
    student[1][1, :, :, 4] = 0.0  # a dead channel
    grad_teacher = jax.jit(jax.grad(lambda t: losses.spkd_loss(t, student)))(teacher)
    assert all(not np.any(np.asarray(g)) for g in grad_teacher)
    grads = jax.jit(jax.grad(lambda s: losses.spkd_loss(teacher, s)))(student)
    # The literal sqrt(sum(x²)) of the original gives NaN there; ours has the subgradient 0 of the norm, i.e. the
    # gradient of torch.linalg.vector_norm, and matches torch elsewhere.
    _, (literal,) = torch_grads(lambda s: t_spkd([nhwc_to_nchw(t) for t in teacher], s, sum_all=True), student)
    assert np.isnan(literal[0]).any()

    def t_spkd_safe(s):
        def spatial(fm):
            x = fm.reshape(fm.shape[0], fm.shape[1], -1)
            x = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + 1e-7)
            return x.transpose(1, 2) @ x

        def channel(fm):
            x = fm.reshape(fm.shape[0], fm.shape[1], -1)
            x = x / (torch.linalg.vector_norm(x, dim=2, keepdim=True) + 1e-7)
            return x @ x.transpose(1, 2)

        total = 0
        for t, m in zip([nhwc_to_nchw(t) for t in teacher], s, strict=True):
            total = total + torch.mean((spatial(t) - spatial(m)) ** 2) + torch.mean((channel(t) - channel(m)) ** 2)
        return total

    _, (safe,) = torch_grads(t_spkd_safe, student)
    assert_grads_close(grads, safe)


def test_spkd_rejects_mismatched_inputs():
    teacher, student = features(12, TEACHER_WIDTHS), features(13, STUDENT_WIDTHS)
    with pytest.raises(ValueError, match="channel similarity"):
        losses.spkd_loss(teacher, student)  # pruned widths need the projections
    with pytest.raises(ValueError, match="equally many"):
        losses.spkd_loss(teacher, student[:3])
    with pytest.raises(ValueError, match="channel projections"):
        losses.spkd_loss(teacher, student, teacher[:2])
    with pytest.raises(ValueError, match="mode"):
        losses.spkd_loss(teacher, teacher, mode="sum")
    with pytest.raises(ValueError, match="spatial size"):
        losses.spkd_term(teacher[0], teacher[1])
