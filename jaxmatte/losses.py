"""Training losses as pure functions on NHWC arrays.

Images are ``(B, H, W, C)`` (usually ``C = 1``): probabilities ``p`` or logits ``z`` against the ground-truth alpha
``g`` in [0, 1]. Every function casts its inputs to float32 and computes in float32, also when the model runs in
bfloat16. All functions are jit-friendly (filter kernels are NumPy constants built at trace time) and return scalars,
so they compose with ``jax.value_and_grad(..., has_aux=True)`` and optax directly. The combined losses return
``(total, terms)`` where ``terms`` holds the unweighted terms (and ``"total"``) for logging; their weights, ``mode``
and switches are static Python values.

Filters are cross-correlations with zero padding applied to each channel separately, as ``F.conv2d`` with a
``(1, 1, k, k)`` kernel per channel. ``|x|`` and clamps have PyTorch's gradients (0 at ``|0|``; 1 strictly inside a
clamp's bounds, 0 at them), so gradients agree with autograd also at ties.

TwinSwin / TSR (``tsr_twinswin.md`` §5): ``l1``, ``sobel_gradient``, ``ssim``, ``feature_alignment``, ``structure``,
``matting_loss``, ``twinswin_loss``, ``tsr_loss``. DINOv3 matting (``dinov3_matting.md`` §5): ``charbonnier``,
``multiscale_gradient``, ``laplacian``, ``boundary``, ``dinov3_matting_loss``. SegTrimap (``segtrimap.md`` §8), on class
logits against integer labels: ``normalized_focal_loss_softmax``, ``cross_entropy_loss``, ``unknown_distance_map``
(host-side NumPy/SciPy), ``unknown_dt_loss``, ``segtrimap_loss``.
"""

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy import ndimage

__all__ = [
    "SOBEL_X",
    "SOBEL_Y",
    "LAPLACIAN",
    "alpha_prediction_loss",
    "boundary",
    "charbonnier",
    "cross_entropy_loss",
    "dinov3_matting_loss",
    "feature_alignment",
    "gaussian_window",
    "l1",
    "laplacian",
    "matting_loss",
    "multiscale_gradient",
    "normalized_focal_loss_softmax",
    "segtrimap_loss",
    "sobel_gradient",
    "spkd_channel_similarity",
    "spkd_loss",
    "spkd_spatial_similarity",
    "spkd_term",
    "ssim",
    "structure",
    "tsr_loss",
    "twinswin_loss",
    "unknown_distance_map",
    "unknown_dt_loss",
]

SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
SOBEL_Y = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], np.float32)
LAPLACIAN = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], np.float32)

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
STRUCTURE_POOL = 31
STRUCTURE_LOGIT_CLAMP = 10.0
REFINED_PROB_CLAMP = 1e-6


# ----------------------------------------------------------------------------------------------------------- helpers


def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _pair(pred: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    pred, target = _f32(pred), _f32(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} != target shape {target.shape}")
    if pred.ndim != 4:
        raise ValueError(f"expected NHWC arrays (B, H, W, C), got shape {pred.shape}")
    return pred, target


def _abs(x: jax.Array) -> jax.Array:
    """|x| whose gradient is sign(x) (0 at 0), as PyTorch's."""
    return x * lax.stop_gradient(jnp.sign(x))


def _clamp(x: jax.Array, low: float, high: float) -> jax.Array:
    """torch.clamp with scalar bounds: gradient 1 strictly inside (low, high), 0 at the bounds and outside."""
    return jnp.where(x <= low, low, jnp.where(x >= high, high, x))


def _filter(x: jax.Array, kernel: np.ndarray) -> jax.Array:
    """Per-channel cross-correlation of NHWC ``x`` with a 2-D kernel, zero padding ``k // 2`` on each side."""
    kernel = np.asarray(kernel, np.float32)
    kh, kw = kernel.shape
    channels = x.shape[-1]
    weights = jnp.asarray(np.broadcast_to(kernel[:, :, None, None], (kh, kw, 1, channels)))
    return lax.conv_general_dilated(
        x,
        weights,
        window_strides=(1, 1),
        padding=((kh // 2, kh // 2), (kw // 2, kw // 2)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
        precision=lax.Precision.HIGHEST,
    )


def _sobel(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _filter(x, SOBEL_X), _filter(x, SOBEL_Y)


def _box_sum(x: jax.Array, size: int) -> jax.Array:
    """Sum over a ``size x size`` window, stride 1, zero padding ``size // 2`` (separable)."""
    pad = size // 2
    x = lax.reduce_window(x, 0.0, lax.add, (1, size, 1, 1), (1, 1, 1, 1), ((0, 0), (pad, pad), (0, 0), (0, 0)))
    return lax.reduce_window(x, 0.0, lax.add, (1, 1, size, 1), (1, 1, 1, 1), ((0, 0), (0, 0), (pad, pad), (0, 0)))


def _avg_pool(x: jax.Array, size: int) -> jax.Array:
    """``F.avg_pool2d(x, size, size)``: non-overlapping windows, trailing rows/columns dropped."""
    if size == 1:
        return x
    batch, height, width, channels = x.shape
    out_h, out_w = height // size, width // size
    x = x[:, : out_h * size, : out_w * size].reshape(batch, out_h, size, out_w, size, channels)
    return jnp.mean(x, axis=(2, 4))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """The normalised 1-D Gaussian taps; the SSIM window is their outer product (which also sums to 1)."""
    offsets = np.arange(size, dtype=np.float64) - size // 2
    taps = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return (taps / taps.sum()).astype(np.float32)


# ------------------------------------------------------------------------------------------- TwinSwin / TSR terms


def l1(pred: jax.Array, target: jax.Array) -> jax.Array:
    """mean |p - g|."""
    pred, target = _pair(pred, target)
    return jnp.mean(_abs(pred - target))


def sobel_gradient(pred: jax.Array, target: jax.Array) -> jax.Array:
    """mean(|Sx*p - Sx*g| + |Sy*p - Sy*g|), Sobel cross-correlation with zero padding 1."""
    pred, target = _pair(pred, target)
    px, py = _sobel(pred)
    gx, gy = _sobel(target)
    return jnp.mean(_abs(px - gx) + _abs(py - gy))


def ssim(pred: jax.Array, target: jax.Array, *, window_size: int = 11, sigma: float = 1.5) -> jax.Array:
    """Mean SSIM with a Gaussian window (zero padding ``window_size // 2``), C1 = 0.01², C2 = 0.03².

    The loss term is ``1 - ssim(p, g)``.
    """
    pred, target = _pair(pred, target)
    channels = pred.shape[-1]
    taps = gaussian_window(window_size, sigma)
    maps = jnp.concatenate([pred, target, pred * pred, target * target, pred * target], axis=-1)
    blurred = _filter(_filter(maps, taps[:, None]), taps[None, :])
    mu_p, mu_g, e_pp, e_gg, e_pg = (blurred[..., i * channels : (i + 1) * channels] for i in range(5))
    var_p = e_pp - mu_p * mu_p
    var_g = e_gg - mu_g * mu_g
    cov = e_pg - mu_p * mu_g
    numerator = (2.0 * mu_p * mu_g + SSIM_C1) * (2.0 * cov + SSIM_C2)
    denominator = (mu_p * mu_p + mu_g * mu_g + SSIM_C1) * (var_p + var_g + SSIM_C2)
    return jnp.mean(numerator / denominator)


def feature_alignment(student_feats: Sequence[jax.Array], teacher_feats: Sequence[jax.Array]) -> jax.Array:
    """Σ over the pairs of mean((s - t)²); the teacher side is not differentiated.

    The pairs are taken in order; TwinSwin/TSR pass ``(d1, d2)`` and ``(p2, p1)``.
    """
    student_feats, teacher_feats = list(student_feats), list(teacher_feats)
    if not student_feats or len(student_feats) != len(teacher_feats):
        raise ValueError(
            f"need equally many student and teacher features, got {len(student_feats)} and {len(teacher_feats)}"
        )
    total = jnp.zeros((), jnp.float32)
    for index, (student, teacher) in enumerate(zip(student_feats, teacher_feats, strict=True)):
        if student.shape != teacher.shape:
            raise ValueError(f"feature pair {index}: student shape {student.shape} != teacher shape {teacher.shape}")
        diff = _f32(student) - lax.stop_gradient(_f32(teacher))
        total = total + jnp.mean(diff * diff)
    return total


def structure(logits: jax.Array, target: jax.Array) -> jax.Array:
    """LOCATOR structure loss: weighted BCE-with-logits + weighted IoU, mean over the batch.

    weit = 1 + 5 |avgpool31(g) - g| (stride 1, zero padding 15, divided by 31² everywhere); z clamped to ±10;
    per image (and channel) wBCE = Σ weit·bce(z, g) / Σ weit and wIoU = 1 - (Σ p g weit + 1) / (Σ (p + g) weit -
    Σ p g weit + 1) with p = sigmoid(z).
    """
    logits, target = _pair(logits, target)
    weit = 1.0 + 5.0 * jnp.abs(_box_sum(target, STRUCTURE_POOL) / STRUCTURE_POOL**2 - target)
    z = _clamp(logits, -STRUCTURE_LOGIT_CLAMP, STRUCTURE_LOGIT_CLAMP)
    bce = (1.0 - target) * z + jax.nn.softplus(-z)
    wbce = jnp.sum(weit * bce, axis=(1, 2)) / jnp.sum(weit, axis=(1, 2))
    prob = jax.nn.sigmoid(z)
    inter = jnp.sum(prob * target * weit, axis=(1, 2))
    union = jnp.sum((prob + target) * weit, axis=(1, 2))
    wiou = 1.0 - (inter + 1.0) / (union - inter + 1.0)
    return jnp.mean(wbce + wiou)


# ------------------------------------------------------------------------------------------ TwinSwin / TSR totals


def matting_loss(
    prob: jax.Array, target: jax.Array, *, w_l1: float = 1.0, w_grad: float = 1.0, w_ssim: float = 0.5
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """w_l1·L1 + w_grad·Grad + w_ssim·(1 - SSIM) on probabilities; terms ``l1``, ``grad``, ``ssim_loss``, ``total``."""
    terms = {"l1": l1(prob, target), "grad": sobel_gradient(prob, target), "ssim_loss": 1.0 - ssim(prob, target)}
    total = w_l1 * terms["l1"] + w_grad * terms["grad"] + w_ssim * terms["ssim_loss"]
    return total, {**terms, "total": total}


def _with_features(total, terms, student_feats, teacher_feats, w_feat):
    if student_feats is None or teacher_feats is None or w_feat == 0:
        return total, terms
    feat = feature_alignment(student_feats, teacher_feats)
    total = total + w_feat * feat
    return total, {**terms, "feat": feat, "total": total}


def twinswin_loss(
    logits: jax.Array,
    target: jax.Array,
    student_feats: Sequence[jax.Array] | None = None,
    teacher_feats: Sequence[jax.Array] | None = None,
    *,
    mode: Literal["matting", "locator"] = "matting",
    w_l1: float = 1.0,
    w_grad: float = 1.0,
    w_ssim: float = 0.5,
    w_bce: float = 1.0,
    w_dice: float = 1.0,
    w_feat: float = 0.2,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """TwinSwin total from the student logits.

    ``"matting"``: w_l1·L1 + w_grad·Grad + w_ssim·(1 - SSIM) on sigmoid(logits); ``"locator"``:
    (w_bce + w_dice)·Structure(logits). Plus w_feat·Feat when both feature lists are given and w_feat != 0 (term
    ``feat``). The sigmoid is taken in float32.
    """
    if mode == "matting":
        total, terms = matting_loss(jax.nn.sigmoid(_f32(logits)), target, w_l1=w_l1, w_grad=w_grad, w_ssim=w_ssim)
    elif mode == "locator":
        term = structure(logits, target)
        total = (w_bce + w_dice) * term
        terms = {"structure": term, "total": total}
    else:
        raise ValueError(f"mode must be 'matting' or 'locator', got {mode!r}")
    return _with_features(total, terms, student_feats, teacher_feats, w_feat)


def tsr_loss(
    coarse_logits: jax.Array,
    refined_logits: jax.Array,
    target: jax.Array,
    student_feats: Sequence[jax.Array] | None = None,
    teacher_feats: Sequence[jax.Array] | None = None,
    *,
    w_l1: float = 1.0,
    w_grad: float = 1.0,
    w_ssim: float = 0.5,
    w_feat: float = 0.2,
    clamp_refined: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """TSR-Matte total: coarse + refined matting losses (+ w_feat·Feat).

    ``refined_logits`` is the refiner's pre-sigmoid output z_ref = coarse_prob + Δ (float32); the refined terms use
    sigmoid(z_ref) directly, with no clamp-and-logit round trip, so they stay finite where the original's fp16
    inversion overflows. ``clamp_refined=True`` applies clamp(sigmoid(z_ref), 1e-6, 1 - 1e-6), which is the original's
    round trip done exactly. The refined Grad weight is max(2·w_grad, 1). Terms are prefixed ``coarse/`` and
    ``refined/``.
    """
    coarse_total, coarse_terms = matting_loss(
        jax.nn.sigmoid(_f32(coarse_logits)), target, w_l1=w_l1, w_grad=w_grad, w_ssim=w_ssim
    )
    refined_prob = jax.nn.sigmoid(_f32(refined_logits))
    if clamp_refined:
        refined_prob = _clamp(refined_prob, REFINED_PROB_CLAMP, 1.0 - REFINED_PROB_CLAMP)
    refined_total, refined_terms = matting_loss(
        refined_prob, target, w_l1=w_l1, w_grad=max(2.0 * w_grad, 1.0), w_ssim=w_ssim
    )
    total = coarse_total + refined_total
    terms = {
        **{f"coarse/{name}": value for name, value in coarse_terms.items()},
        **{f"refined/{name}": value for name, value in refined_terms.items()},
        "total": total,
    }
    return _with_features(total, terms, student_feats, teacher_feats, w_feat)


# ------------------------------------------------------------------------------------------------- DINOv3 matting


def charbonnier(pred: jax.Array, target: jax.Array, eps: float = 1e-6) -> jax.Array:
    """mean sqrt((p - g)² + eps); ``eps`` is added under the root as is (1e-6 in DINOv3 matting)."""
    pred, target = _pair(pred, target)
    diff = pred - target
    return jnp.mean(jnp.sqrt(diff * diff + eps))


def laplacian(pred: jax.Array, target: jax.Array) -> jax.Array:
    """mean |Lap*p - Lap*g| with the 4-neighbour kernel [[0,-1,0],[-1,4,-1],[0,-1,0]], zero padding 1."""
    pred, target = _pair(pred, target)
    return jnp.mean(_abs(_filter(pred, LAPLACIAN) - _filter(target, LAPLACIAN)))


def multiscale_gradient(
    pred: jax.Array, target: jax.Array, *, scales: Sequence[int] = (1, 2, 4), eps: float = 1e-8
) -> jax.Array:
    """Edge-weighted Sobel-magnitude loss averaged over scales.

    At scale s: p_s, g_s = avg_pool(s, stride s); G(x) = sqrt((Sx*x)² + (Sy*x)² + eps); w = exp(G(g_s));
    L_s = mean |G(p_s)·w - G(g_s)·w|. Result: mean over the scales of L_s / s.
    """
    pred, target = _pair(pred, target)

    def magnitude(x):
        gx, gy = _sobel(x)
        return jnp.sqrt(gx * gx + gy * gy + eps)

    total = jnp.zeros((), jnp.float32)
    for scale in scales:
        grad_p = magnitude(_avg_pool(pred, scale))
        grad_g = magnitude(_avg_pool(target, scale))
        weight = jnp.exp(grad_g)
        total = total + jnp.mean(_abs(grad_p * weight - grad_g * weight)) / scale
    return total / len(scales)


def dinov3_matting_loss(
    prob: jax.Array,
    target: jax.Array,
    *,
    w_charbonnier: float = 1.0,
    w_gradient: float = 0.5,
    w_laplacian: float = 0.1,
    use_charbonnier: bool = True,
    w_boundary: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """DINOv3 matting total on probabilities (the composition term is off in that recipe and omitted).

    Terms ``charbonnier`` (or ``l1`` with ``use_charbonnier=False``), ``gradient``, ``laplacian``, ``total``; with
    ``w_boundary > 0`` also ``boundary`` (off by default, as in the original configuration).
    """
    pixel_name = "charbonnier" if use_charbonnier else "l1"
    pixel = charbonnier(prob, target) if use_charbonnier else l1(prob, target)
    terms = {pixel_name: pixel, "gradient": multiscale_gradient(prob, target), "laplacian": laplacian(prob, target)}
    total = w_charbonnier * pixel + w_gradient * terms["gradient"] + w_laplacian * terms["laplacian"]
    if w_boundary > 0:
        terms["boundary"] = boundary(prob, target)
        total = total + w_boundary * terms["boundary"]
    return total, {**terms, "total": total}


BOUNDARY_WEIGHT = 5.0
BOUNDARY_THRESHOLD = 0.01


def boundary(
    pred: jax.Array,
    target: jax.Array,
    *,
    weight: float = BOUNDARY_WEIGHT,
    threshold: float = BOUNDARY_THRESHOLD,
    kernel_size: int = 3,
) -> jax.Array:
    """mean smooth-L1(p, g) * (1 + weight * [local variance of g > threshold]) (DINOv3 matting, boundary-aware).

    Local variance: box mean of g² minus the squared box mean of g over ``kernel_size``² windows with zero padding
    (divisor ``kernel_size``² everywhere, as a normalised ones-kernel convolution). Smooth-L1 with beta 1. The mask
    carries no gradient.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    pred, target = _pair(pred, target)
    area = float(kernel_size * kernel_size)
    mean = _box_sum(target, kernel_size) / area
    variance = _box_sum(target * target, kernel_size) / area - mean * mean
    mask = lax.stop_gradient((variance > threshold).astype(jnp.float32))
    diff = pred - target
    magnitude = _abs(diff)
    smooth = jnp.where(magnitude < 1.0, 0.5 * diff * diff, magnitude - 0.5)
    return jnp.mean(smooth * (1.0 + weight * mask))


# --------------------------------------------------------------------------------- SegTrimap (trimap segmentation)

# SegTrimap (``segtrimap.md`` §8) works on class logits ``(B, H, W, C)`` (C = 3: 0 = BG, 1 = Unknown, 2 = FG) that the
# caller has already resized to the label size, and int labels ``(B, H, W)`` where ``ignore_label`` marks pixels to
# skip. Labels other than ``ignore_label`` must lie in [0, C); an out-of-range class gathers NaN (it cannot raise
# under jit).

UNKNOWN_LABEL = 1
SEGTRIMAP_LOSS_KINDS = ("nfl_dt", "ce", "ce_nfl", "nfl")


def _class_inputs(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits, labels = _f32(logits), jnp.asarray(labels)
    if logits.ndim != 4:
        raise ValueError(f"expected NHWC logits (B, H, W, C), got shape {logits.shape}")
    if labels.shape != logits.shape[:3]:
        raise ValueError(f"label shape {labels.shape} != logits shape without classes {logits.shape[:3]}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    return logits, labels.astype(jnp.int32)


def _true_class_log_prob(logits: jax.Array, labels: jax.Array, valid: jax.Array) -> jax.Array:
    """log softmax(z)[label] per pixel; 0 at invalid pixels (gathered at class 0 so no bad index reaches the gather)."""
    log_prob = jax.nn.log_softmax(logits, axis=-1)
    safe = jnp.where(valid, labels, 0)
    picked = jnp.take_along_axis(log_prob, safe[..., None], axis=-1)[..., 0]
    return jnp.where(valid, picked, 0.0)


def normalized_focal_loss_softmax(
    logits: jax.Array, labels: jax.Array, *, gamma: float = 2.0, ignore_label: int = -1, eps: float = 1e-12
) -> jax.Array:
    """Softmax normalised focal loss (§8.1), normalised over all valid pixels of the batch.

    With p_t = exp(log_softmax(z)[label]) and w = (1 - p_t)^gamma over the N valid pixels of the whole batch, the
    original's mean_i(-w_i·N/(Σw + eps)·log p_t,i) equals -Σ w·log p_t / (Σ w + eps), which is what is computed.
    The normaliser is not detached (the gradient flows through Σ w). 0 when no pixel is valid.
    """
    logits, labels = _class_inputs(logits, labels)
    valid = labels != ignore_label
    log_pt = _true_class_log_prob(logits, labels, valid)
    # Invalid pixels use base 1 so that pow's gradient stays finite there for any gamma.
    base = jnp.where(valid, 1.0 - jnp.exp(log_pt), 1.0)
    weight = jnp.where(valid, jnp.power(base, gamma), 0.0)
    return -jnp.sum(weight * log_pt) / (jnp.sum(weight) + eps)


def cross_entropy_loss(logits: jax.Array, labels: jax.Array, *, ignore_label: int = -1) -> jax.Array:
    """Mean of -log softmax(z)[label] over the valid pixels (``F.cross_entropy(ignore_index=...)``); 0 if none."""
    logits, labels = _class_inputs(logits, labels)
    valid = labels != ignore_label
    log_pt = _true_class_log_prob(logits, labels, valid)
    count = jnp.sum(valid.astype(jnp.float32))
    return -jnp.sum(log_pt) / jnp.maximum(count, 1.0)


def unknown_distance_map(labels: np.ndarray) -> np.ndarray:
    """Host-side §8.2 distance map: ``scipy.ndimage.distance_transform_edt(labels == 1)`` per image, float32.

    Each Unknown pixel gets its Euclidean distance to the nearest non-Unknown pixel of its own image; every other
    pixel gets 0, and the array border does not count as non-Unknown. Accepts ``(H, W)`` or ``(B, H, W)`` (each image
    separately, never a 3-D transform). Edge cases, as SciPy (hence the original) computes them: no Unknown pixel gives
    all zeros; an image that is entirely Unknown has no non-Unknown pixel, and SciPy then measures to a virtual one at
    (row -1, column 0), i.e. D[i, j] = sqrt((i + 1)² + j²).
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"expected labels (H, W) or (B, H, W), got shape {labels.shape}")
    unknown = labels == UNKNOWN_LABEL
    if labels.ndim == 2:
        return ndimage.distance_transform_edt(unknown).astype(np.float32)
    out = np.zeros(labels.shape, np.float32)
    for index, image in enumerate(unknown):
        if image.any():
            out[index] = ndimage.distance_transform_edt(image)
    return out


def unknown_dt_loss(logits: jax.Array, labels: jax.Array, distance: jax.Array) -> jax.Array:
    """UnknownRegionDTLoss (§8.2): mean over the batch of mean_{H·W}((1 - softmax(z)_Unknown)·[label = 1]·D).

    ``distance`` is ``unknown_distance_map(labels)`` (data, not differentiated). Images without Unknown pixels give 0
    and still count in the batch mean; ignore pixels are not excluded (as the original).
    """
    logits, labels = _class_inputs(logits, labels)
    distance = lax.stop_gradient(_f32(distance))
    if distance.shape != labels.shape:
        raise ValueError(f"distance shape {distance.shape} != label shape {labels.shape}")
    unknown = (labels == UNKNOWN_LABEL).astype(jnp.float32)
    prob_unknown = jax.nn.softmax(logits, axis=-1)[..., UNKNOWN_LABEL]
    per_image = jnp.mean((1.0 - prob_unknown) * unknown * distance, axis=(1, 2))
    return jnp.mean(per_image)


def segtrimap_loss(
    logits: jax.Array,
    labels: jax.Array,
    distance: jax.Array | None = None,
    *,
    kind: str = "nfl_dt",
    w_nfl: float = 1.0,
    w_dt: float = 0.1,
    w_ce: float = 1.0,
    gamma: float = 2.0,
    ignore_label: int = -1,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SegTrimap total (§8.3); ``kind`` and the weights are static.

    ``"nfl_dt"`` (headline): w_nfl·NFL + w_dt·DT, needs ``distance``; ``"ce"``: w_ce·CE; ``"ce_nfl"``: w_ce·CE +
    w_nfl·NFL (the original configurations use w_nfl 0.1 and 0.5); ``"nfl"``: w_nfl·NFL. Terms: the unweighted
    ``nfl``, ``dt``, ``ce`` that the kind uses, and the weighted total as ``loss``.
    """
    if kind not in SEGTRIMAP_LOSS_KINDS:
        raise ValueError(f"kind must be one of {', '.join(SEGTRIMAP_LOSS_KINDS)}; got {kind!r}")
    terms: dict[str, jax.Array] = {}
    total = jnp.zeros((), jnp.float32)
    if kind in ("ce", "ce_nfl"):
        terms["ce"] = cross_entropy_loss(logits, labels, ignore_label=ignore_label)
        total = total + w_ce * terms["ce"]
    if kind in ("nfl_dt", "ce_nfl", "nfl"):
        terms["nfl"] = normalized_focal_loss_softmax(logits, labels, gamma=gamma, ignore_label=ignore_label)
        total = total + w_nfl * terms["nfl"]
    if kind == "nfl_dt":
        if distance is None:
            raise ValueError("kind 'nfl_dt' needs the distance map (unknown_distance_map(labels))")
        terms["dt"] = unknown_dt_loss(logits, labels, distance)
        total = total + w_dt * terms["dt"]
    return total, {**terms, "total": total}


# ------------------------------------------------------------------------------------ Matting Prune / DIM (SPKD)

# Matting Prune (``dim_prune.md`` §5): the alpha-prediction loss of DIM and DCP's SPKD distillation between teacher
# and student feature maps (NHWC, the pooled outputs of down2..down5). Teacher features are never differentiated.

ALPHA_LOSS_EPS_SQUARED = 1e-12
ALPHA_LOSS_MASK_EPS = 1e-6
SPKD_NORM_EPS = 1e-7
SPKD_MODES = ("fixed", "faithful")


def alpha_prediction_loss(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """DIM's L_α (§5.1): Σ sqrt(((p - t)·m)² + 1e-12) / (Σ m + 1e-6) over every pixel of the whole batch.

    Any layout works as long as the three shapes agree (e.g. (B, H, W) or (B, H, W, 1)). Pixels outside the mask
    still add 1e-6 each to the numerator, as in the original. `target` (ground truth or teacher alpha) and `mask`
    are data: no gradient flows into them.
    """
    pred = _f32(pred)
    target = lax.stop_gradient(_f32(target))
    mask = lax.stop_gradient(_f32(mask))
    if not pred.shape == target.shape == mask.shape:
        raise ValueError(f"shapes differ: prediction {pred.shape}, target {target.shape}, mask {mask.shape}")
    diff = (pred - target) * mask
    return jnp.sum(jnp.sqrt(diff * diff + ALPHA_LOSS_EPS_SQUARED)) / (jnp.sum(mask) + ALPHA_LOSS_MASK_EPS)


def _positions_by_channels(features: jax.Array) -> jax.Array:
    """(B, H, W, C) -> float32 (B, HW, C): row p is spatial position p (row-major, as torch's ``view(B, C, -1)``)."""
    features = _f32(features)
    if features.ndim != 4:
        raise ValueError(f"expected NHWC feature maps (B, H, W, C), got shape {features.shape}")
    batch, height, width, channels = features.shape
    return features.reshape(batch, height * width, channels)


def _l2_norm(x: jax.Array, axis: int) -> jax.Array:
    """sqrt(Σ x²) along `axis` (kept); its gradient is 0 where the norm is 0 (torch's sqrt(sum(x²)) gives NaN)."""
    squared = jnp.sum(x * x, axis=axis, keepdims=True)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def spkd_spatial_similarity(features: jax.Array) -> jax.Array:
    """S_sp (B, HW, HW): cosine-like similarity of spatial positions, each normalised over channels (+1e-7)."""
    x = _positions_by_channels(features)
    x = x / (_l2_norm(x, axis=2) + SPKD_NORM_EPS)
    return jnp.einsum("bpc,bqc->bpq", x, x, precision=lax.Precision.HIGHEST)


def spkd_channel_similarity(features: jax.Array) -> jax.Array:
    """S_ch (B, C, C): similarity of channels, each normalised over the spatial positions (+1e-7)."""
    x = _positions_by_channels(features)
    x = x / (_l2_norm(x, axis=1) + SPKD_NORM_EPS)
    return jnp.einsum("bpc,bpd->bcd", x, x, precision=lax.Precision.HIGHEST)


def spkd_term(teacher: jax.Array, student: jax.Array, student_channel: jax.Array | None = None) -> jax.Array:
    """mean((S_sp,T - S_sp,S)²) + mean((S_ch,T - S_ch,S)²) for one feature pair (kd_weight [1, 1]).

    S_sp,S comes from the student's raw map (HW x HW does not depend on its width); S_ch,S from `student_channel`
    (the pruned student's 1x1 projection to the teacher's width) when given, else from the raw map.
    """
    teacher = lax.stop_gradient(_f32(teacher))
    channel_source = student if student_channel is None else student_channel
    if teacher.ndim != 4 or student.ndim != 4 or channel_source.ndim != 4:
        raise ValueError("SPKD feature maps are NHWC (B, H, W, C)")
    if teacher.shape[:3] != student.shape[:3]:
        raise ValueError(f"teacher {teacher.shape} and student {student.shape} differ in batch or spatial size")
    if channel_source.shape != teacher.shape:
        what = "student" if student_channel is None else "student channel projection"
        raise ValueError(f"teacher {teacher.shape} and {what} {channel_source.shape} differ (channel similarity)")
    spatial = spkd_spatial_similarity(teacher) - spkd_spatial_similarity(student)
    channel = spkd_channel_similarity(teacher) - spkd_channel_similarity(channel_source)
    return jnp.mean(spatial * spatial) + jnp.mean(channel * channel)


def spkd_loss(
    teacher_feats: Sequence[jax.Array],
    student_feats: Sequence[jax.Array],
    student_channel_feats: Sequence[jax.Array] | None = None,
    *,
    mode: Literal["fixed", "faithful"] = "fixed",
) -> jax.Array:
    """DCP's SPKD loss over the feature pairs (§5.2); `mode` is static.

    ``"fixed"``: Σ over all pairs of `spkd_term`; ``"faithful"``: the last pair only (the original's loop assigns
    instead of accumulating, so only down5 counts). `student_channel_feats` are the pruned student's projections
    ``feature2..5`` (training stage); None uses the raw student maps (pruning stage, full-width student).
    """
    if mode not in SPKD_MODES:
        raise ValueError(f"mode must be one of {SPKD_MODES}, got {mode!r}")
    teacher_feats, student_feats = list(teacher_feats), list(student_feats)
    if not teacher_feats or len(teacher_feats) != len(student_feats):
        counts = f"{len(teacher_feats)} and {len(student_feats)}"
        raise ValueError(f"need equally many teacher and student maps, got {counts}")
    channel_feats = [None] * len(student_feats) if student_channel_feats is None else list(student_channel_feats)
    if len(channel_feats) != len(student_feats):
        raise ValueError(f"{len(channel_feats)} channel projections for {len(student_feats)} student maps")
    pairs = list(zip(teacher_feats, student_feats, channel_feats, strict=True))
    if mode == "faithful":
        pairs = pairs[-1:]
    total = jnp.zeros((), jnp.float32)
    for teacher, student, channel in pairs:
        total = total + spkd_term(teacher, student, channel)
    return total
