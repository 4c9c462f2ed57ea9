"""SegTrimap losses (segtrimap.md §8) against direct PyTorch evaluations (float64) and brute-force distance maps."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from jaxmatte import losses

CLASSES = 3
HW = (9, 11)


def make_batch(seed: int, batch: int, ignore: float = 0.2, scale: float = 3.0, hw=HW):
    """Random logits (B, H, W, 3) and labels in {0, 1, 2} with a fraction ``ignore`` set to -1."""
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((batch, *hw, CLASSES))).astype(np.float32)
    labels = rng.integers(0, CLASSES, (batch, *hw)).astype(np.int32)
    labels[rng.uniform(size=labels.shape) < ignore] = -1
    return logits, labels


def t_logits(logits: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(logits).double().requires_grad_(True)


def t_nfl(logits: np.ndarray, labels: np.ndarray, gamma=2.0, eps=1e-12, detach=False):
    """§8.1 steps 1-5 literally (normaliser detached on request); returns (value, d value / d logits) in NHWC."""
    z = t_logits(logits)
    flat_labels = torch.from_numpy(labels).long().reshape(-1)
    keep = flat_labels != -1
    log_prob = F.log_softmax(z, dim=-1).reshape(-1, CLASSES)[keep]
    log_pt = log_prob.gather(1, flat_labels[keep][:, None])[:, 0]
    weight = (1.0 - log_pt.exp()) ** gamma
    norm = weight.sum().detach() if detach else weight.sum()
    weight = weight / (norm + eps) * keep.sum()
    loss = torch.mean(-weight * log_pt)
    loss.backward()
    return loss.item(), z.grad.numpy()


def t_ce(logits: np.ndarray, labels: np.ndarray):
    z = t_logits(logits)
    loss = F.cross_entropy(z.permute(0, 3, 1, 2), torch.from_numpy(labels).long(), ignore_index=-1)
    loss.backward()
    return loss.item(), z.grad.numpy()


def t_dt(logits: np.ndarray, labels: np.ndarray, distance: np.ndarray):
    z = t_logits(logits)
    unknown = torch.from_numpy(labels == 1).double()
    prob_unknown = torch.softmax(z, dim=-1)[..., 1]
    per_image = ((1.0 - prob_unknown) * unknown * torch.from_numpy(distance).double()).mean(dim=(1, 2))
    loss = per_image.mean()
    loss.backward()
    return loss.item(), z.grad.numpy()


def value_and_grad(fn, logits, *args, **kwargs):
    value, grad = jax.jit(jax.value_and_grad(functools.partial(fn, **kwargs)))(jnp.asarray(logits), *args)
    return float(value), np.asarray(grad)


def assert_grad_close(grad, ref, rel=1e-5):
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=rel * np.abs(ref).max())


def brute_force_distance(labels2d: np.ndarray) -> np.ndarray:
    """Distance of each Unknown pixel to the nearest non-Unknown pixel of the map, by loops (0 elsewhere)."""
    height, width = labels2d.shape
    others = [(i, j) for i in range(height) for j in range(width) if labels2d[i, j] != 1]
    out = np.zeros((height, width), np.float64)
    for i, j in itertools.product(range(height), range(width)):
        if labels2d[i, j] == 1:
            out[i, j] = min(np.hypot(i - a, j - b) for a, b in others)
    return out


# --------------------------------------------------------------------------------------------- normalised focal loss


@pytest.mark.parametrize("batch", [1, 2, 4])
@pytest.mark.parametrize("gamma", [2.0, 0.5])
def test_nfl_matches_torch(batch, gamma):
    logits, labels = make_batch(batch, batch)
    value, grad = value_and_grad(losses.normalized_focal_loss_softmax, logits, labels, gamma=gamma)
    ref_value, ref_grad = t_nfl(logits, labels, gamma=gamma)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    assert_grad_close(grad, ref_grad)
    # Ignored pixels get exactly no gradient.
    assert np.all(grad[labels == -1] == 0.0)


def test_custom_ignore_label():
    # An ignore value outside [0, C) must never reach the gather (255, as in 8-bit label maps).
    logits, labels = make_batch(8, 2)
    other = np.where(labels == -1, 255, labels)
    for fn in (losses.normalized_focal_loss_softmax, losses.cross_entropy_loss):
        value, grad = value_and_grad(fn, logits, other, ignore_label=255)
        ref_value, ref_grad = value_and_grad(fn, logits, labels)
        np.testing.assert_allclose(value, ref_value, rtol=1e-6)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-9)


def test_nfl_normaliser_is_not_detached():
    logits, labels = make_batch(7, 2)
    value, grad = value_and_grad(losses.normalized_focal_loss_softmax, logits, labels)
    detached_value, detached_grad = t_nfl(logits, labels, detach=True)
    ref_value, ref_grad = t_nfl(logits, labels)
    # Detaching leaves the value alone but changes the gradient markedly; ours is the attached one.
    np.testing.assert_allclose(detached_value, ref_value, rtol=1e-12)
    assert np.abs(detached_grad - ref_grad).max() > 0.05 * np.abs(ref_grad).max()
    assert_grad_close(grad, ref_grad)
    assert np.abs(grad - detached_grad).max() > 0.05 * np.abs(ref_grad).max()


def test_nfl_normalises_over_the_batch():
    logits, labels = make_batch(3, 2, ignore=0.0)
    logits[1] *= 0.1  # unsure image: larger weights than the confident one
    batch_value = float(losses.normalized_focal_loss_softmax(logits, labels))
    per_image = [float(losses.normalized_focal_loss_softmax(logits[i : i + 1], labels[i : i + 1])) for i in range(2)]
    assert abs(batch_value - np.mean(per_image)) > 1e-3 * batch_value


@pytest.mark.parametrize("gamma", [2.0, 0.5])
def test_nfl_all_ignored_is_zero_with_finite_gradient(gamma):
    logits, labels = make_batch(4, 2)
    labels[:] = -1
    logits[0, 0, 0] = [80.0, -80.0, 0.0]  # extreme logits at an ignored pixel stay harmless
    value, grad = value_and_grad(losses.normalized_focal_loss_softmax, logits, labels, gamma=gamma)
    assert value == 0.0
    assert np.all(np.isfinite(grad)) and np.all(grad == 0.0)


def test_nfl_confident_correct_pixels_stay_finite():
    logits, labels = make_batch(5, 2, ignore=0.0)
    # p_t rounds to 1 in float32 at these pixels: w = 0 exactly.
    labels[0, :3] = 2
    logits[0, :3] = [-60.0, -60.0, 60.0]
    value, grad = value_and_grad(losses.normalized_focal_loss_softmax, logits, labels)
    ref_value, ref_grad = t_nfl(logits, labels)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    assert_grad_close(grad, ref_grad)


# ------------------------------------------------------------------------------------------------------ cross entropy


@pytest.mark.parametrize("batch", [1, 4])
def test_ce_matches_torch(batch):
    logits, labels = make_batch(10 + batch, batch)
    value, grad = value_and_grad(losses.cross_entropy_loss, logits, labels)
    ref_value, ref_grad = t_ce(logits, labels)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    assert_grad_close(grad, ref_grad)


def test_ce_all_ignored_is_zero():
    # torch gives NaN (0 / 0) here; jaxmatte returns 0 with a zero gradient.
    logits, labels = make_batch(12, 2)
    labels[:] = -1
    value, grad = value_and_grad(losses.cross_entropy_loss, logits, labels)
    assert value == 0.0
    assert np.all(grad == 0.0)


# ------------------------------------------------------------------------------------------------------ distance map


def random_trimap(seed: int, hw=(7, 8)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice([0, 1, 1, 1, 2, -1], size=hw).astype(np.int32)


@pytest.mark.parametrize("seed", range(4))
def test_distance_map_matches_brute_force(seed):
    labels = random_trimap(seed)
    labels[0, :] = 1  # Unknown along the border
    labels[:, -1] = 1
    distance = losses.unknown_distance_map(labels)
    assert distance.dtype == np.float32 and distance.shape == labels.shape
    np.testing.assert_allclose(distance, brute_force_distance(labels), rtol=1e-6)


def test_distance_map_border_is_not_a_zero():
    labels = np.zeros((4, 6), np.int32)
    labels[:, :3] = 1  # Unknown strip on the left border; nearest non-Unknown is column 3
    distance = losses.unknown_distance_map(labels)
    np.testing.assert_allclose(distance[:, :3], np.broadcast_to([3.0, 2.0, 1.0], (4, 3)))
    assert np.all(distance[:, 3:] == 0.0)


def test_distance_map_without_unknown_is_zero():
    labels = np.array([[0, 2, -1], [2, 0, 0]], np.int32)
    assert np.all(losses.unknown_distance_map(labels) == 0.0)


def test_distance_map_all_unknown_follows_scipy():
    # No non-Unknown pixel: SciPy measures to a virtual one at (row -1, column 0); kept, as the original computed it.
    labels = np.ones((5, 7), np.int32)
    distance = losses.unknown_distance_map(labels)
    rows, cols = np.mgrid[:5, :7]
    np.testing.assert_allclose(distance, np.sqrt((rows + 1.0) ** 2 + cols**2), rtol=1e-6)
    np.testing.assert_allclose(distance, ndimage.distance_transform_edt(labels == 1), rtol=1e-6)


def test_distance_map_batched_is_per_image():
    first = random_trimap(20)
    labels = np.stack([first, np.ones_like(first), np.zeros_like(first)])
    distance = losses.unknown_distance_map(labels)
    assert distance.dtype == np.float32 and distance.shape == labels.shape
    np.testing.assert_allclose(distance[0], brute_force_distance(first), rtol=1e-6)
    # A 3-D transform would reach image 0's or image 2's zeros from the all-Unknown image 1.
    np.testing.assert_allclose(distance[1], losses.unknown_distance_map(labels[1]), rtol=1e-6)
    assert np.all(distance[2] == 0.0)
    with pytest.raises(ValueError, match="expected labels"):
        losses.unknown_distance_map(np.zeros(5, np.int32))


# ------------------------------------------------------------------------------------------------------------ DT loss


def dt_batch(seed: int, batch: int):
    logits, _ = make_batch(seed, batch)
    labels = np.stack([random_trimap(seed * 10 + i, HW) for i in range(batch)])
    return logits, labels, losses.unknown_distance_map(labels)


@pytest.mark.parametrize("batch", [1, 4])
def test_dt_matches_torch(batch):
    logits, labels, distance = dt_batch(30 + batch, batch)
    assert distance.max() > 1.0
    value, grad = value_and_grad(losses.unknown_dt_loss, logits, labels, distance)
    ref_value, ref_grad = t_dt(logits, labels, distance)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    assert_grad_close(grad, ref_grad)


def test_dt_images_without_unknown_count_as_zero():
    logits, labels, distance = dt_batch(40, 2)
    labels[1] = np.where(labels[1] == 1, 0, labels[1])
    distance = losses.unknown_distance_map(labels)
    assert np.all(distance[1] == 0.0) and distance[0].max() > 0.0
    value, grad = value_and_grad(losses.unknown_dt_loss, logits, labels, distance)
    alone = float(losses.unknown_dt_loss(logits[:1], labels[:1], distance[:1]))
    np.testing.assert_allclose(value, alone / 2.0, rtol=1e-6)
    assert np.all(grad[1] == 0.0)
    np.testing.assert_allclose(value, t_dt(logits, labels, distance)[0], rtol=1e-5)


def test_dt_ignore_pixels_are_plain_non_unknown():
    logits, labels, distance = dt_batch(50, 2)
    assert np.any(labels == -1)
    as_bg = np.where(labels == -1, 0, labels)
    np.testing.assert_array_equal(losses.unknown_distance_map(as_bg), distance)
    np.testing.assert_allclose(
        float(losses.unknown_dt_loss(logits, labels, distance)),
        float(losses.unknown_dt_loss(logits, as_bg, distance)),
        rtol=1e-7,
    )


# ------------------------------------------------------------------------------------------------------------ totals


@pytest.fixture(scope="module")
def batch():
    return dt_batch(60, 2)


def test_segtrimap_loss_combinations(batch):
    logits, labels, distance = batch
    nfl = float(losses.normalized_focal_loss_softmax(logits, labels))
    dt = float(losses.unknown_dt_loss(logits, labels, distance))
    ce = float(losses.cross_entropy_loss(logits, labels))
    cases = [
        ("nfl_dt", {}, nfl + 0.1 * dt, {"nfl", "dt"}),
        ("nfl_dt", {"w_nfl": 0.7, "w_dt": 0.3}, 0.7 * nfl + 0.3 * dt, {"nfl", "dt"}),
        ("ce", {}, ce, {"ce"}),
        ("ce", {"w_ce": 2.0}, 2.0 * ce, {"ce"}),
        ("ce_nfl", {"w_nfl": 0.1}, ce + 0.1 * nfl, {"ce", "nfl"}),
        ("ce_nfl", {"w_nfl": 0.5}, ce + 0.5 * nfl, {"ce", "nfl"}),
        ("nfl", {}, nfl, {"nfl"}),
    ]
    for kind, weights, expected, keys in cases:
        total, terms = losses.segtrimap_loss(logits, labels, distance, kind=kind, **weights)
        np.testing.assert_allclose(float(total), expected, rtol=1e-6, err_msg=kind)
        assert set(terms) == keys | {"total"}, kind
        assert float(terms["total"]) == float(total)
        for key, ref in (("nfl", nfl), ("dt", dt), ("ce", ce)):
            if key in terms:
                np.testing.assert_allclose(float(terms[key]), ref, rtol=1e-6)


def test_segtrimap_loss_gamma_reaches_nfl(batch):
    logits, labels, distance = batch
    total, terms = losses.segtrimap_loss(logits, labels, distance, kind="nfl", gamma=1.0)
    np.testing.assert_allclose(float(total), t_nfl(logits, labels, gamma=1.0)[0], rtol=1e-5)


def test_segtrimap_loss_errors(batch):
    logits, labels, distance = batch
    with pytest.raises(ValueError, match="nfl_dt, ce, ce_nfl, nfl"):
        losses.segtrimap_loss(logits, labels, distance, kind="focal")
    with pytest.raises(ValueError, match="distance"):
        losses.segtrimap_loss(logits, labels, kind="nfl_dt")
    with pytest.raises(ValueError, match="label shape"):
        losses.segtrimap_loss(logits, labels[:, :-1], distance)
    with pytest.raises(ValueError, match="integers"):
        losses.cross_entropy_loss(logits, labels.astype(np.float32))


def test_segtrimap_loss_jit_and_grad(batch):
    logits, labels, distance = batch
    fn = functools.partial(losses.segtrimap_loss, kind="nfl_dt")
    (total, terms), grad = jax.jit(jax.value_and_grad(fn, has_aux=True))(jnp.asarray(logits), labels, distance)
    eager, _ = fn(logits, labels, distance)
    np.testing.assert_allclose(float(total), float(eager), rtol=1e-6)
    ref_grad = t_nfl(logits, labels)[1] + 0.1 * t_dt(logits, labels, distance)[1]
    assert_grad_close(np.asarray(grad), ref_grad)


def test_segtrimap_loss_bf16_logits(batch):
    logits, labels, distance = batch
    low = jnp.asarray(logits, jnp.bfloat16)
    for kind in losses.SEGTRIMAP_LOSS_KINDS:
        total, terms = jax.jit(functools.partial(losses.segtrimap_loss, kind=kind))(low, labels, distance)
        assert total.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in terms.values())
        assert np.isfinite(float(total))
        # Computed in float32 from the rounded logits, and close to the float32 loss.
        rounded, _ = losses.segtrimap_loss(np.asarray(low.astype(jnp.float32)), labels, distance, kind=kind)
        np.testing.assert_allclose(float(total), float(rounded), rtol=1e-6)
        full, _ = losses.segtrimap_loss(logits, labels, distance, kind=kind)
        np.testing.assert_allclose(float(total), float(full), rtol=2e-2)
