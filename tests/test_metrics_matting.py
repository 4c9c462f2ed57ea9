"""Official Composition-1k matting metrics against hand-computed cases and plain implementations of the MATLAB code."""

import math
from collections import deque
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from jaxmatte.metrics.matting import (
    MATTING_KEYS,
    connectivity_levels,
    gradient_kernel,
    matting_image_metrics,
    matting_region,
    quantize_alpha,
    summarize_matting,
)

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "alphamatting_training_lowres"


# --- plain implementations of the MATLAB code (DIM_evaluation_code), written for clarity, not speed -------------------


def plain_gaussgradient_kernel(sigma: float = 1.4, epsilon: float = 1e-2) -> np.ndarray:
    """gaussgradient.m's hx, entry by entry."""
    halfsize = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * epsilon)))
    size = 2 * halfsize + 1

    def gauss(x: float) -> float:
        return math.exp(-(x**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))

    def dgauss(x: float) -> float:
        return -x * gauss(x) / sigma**2

    hx = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            hx[i, j] = gauss(i - halfsize) * dgauss(j - halfsize)
    return hx / math.sqrt(np.sum(np.abs(hx) * np.abs(hx)))


def plain_conv_replicate(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """imfilter(image, kernel, 'replicate', 'conv'): out(y, x) = sum_ab kernel(a, b) image(y - (a - c), x - (b - c))."""
    c = kernel.shape[0] // 2
    padded = np.pad(image.astype(np.float64), c, mode="edge")
    height, width = image.shape
    out = np.zeros((height, width))
    for a in range(kernel.shape[0]):
        for b in range(kernel.shape[1]):
            out += kernel[a, b] * padded[2 * c - a : 2 * c - a + height, 2 * c - b : 2 * c - b + width]
    return out


def plain_grad(pred: np.ndarray, gt: np.ndarray, region: np.ndarray) -> float:
    """compute_gradient_loss.m with evaluate.m's / 1000."""

    def mat2gray(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        return (x - x.min()) / (x.max() - x.min()) if x.max() > x.min() else np.zeros_like(x)

    hx = plain_gaussgradient_kernel()

    def amplitude(x: np.ndarray) -> np.ndarray:
        return np.sqrt(plain_conv_replicate(x, hx) ** 2 + plain_conv_replicate(x, hx.T) ** 2)

    error = (amplitude(mat2gray(pred)).astype(np.float32) - amplitude(mat2gray(gt)).astype(np.float32)) ** 2
    return float(np.sum(error.astype(np.float64)[region])) / 1000


def plain_bwconncomp4(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """4-connected components, numbered by their first pixel in column-major scan order (MATLAB's bwconncomp)."""
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    components = []
    for col in range(width):
        for row in range(height):
            if not mask[row, col] or seen[row, col]:
                continue
            pixels, queue = [], deque([(row, col)])
            seen[row, col] = True
            while queue:
                y, x = queue.popleft()
                pixels.append((y, x))
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
            components.append(pixels)
    return components


def plain_levels(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Level index map (level = index / 10) of compute_connectivity_error.m."""
    level = np.full(pred.shape, -1)
    for k in range(1, 11):
        # single(p) / 255 >= k / 10, decided exactly
        both = (pred.astype(int) * 10 >= 255 * k) & (gt.astype(int) * 10 >= 255 * k)
        components = plain_bwconncomp4(both)
        omega = np.zeros(pred.shape, dtype=bool)
        if components:
            sizes = [len(c) for c in components]
            for y, x in components[sizes.index(max(sizes))]:  # first largest
                omega[y, x] = True
        level[(level == -1) & ~omega] = k - 1
    level[level == -1] = 10
    return level


def plain_conn(pred: np.ndarray, gt: np.ndarray, region: np.ndarray) -> float:
    """compute_connectivity_error.m (step 0.1) with evaluate.m's / 1000, in float64."""
    level = plain_levels(pred, gt) / 10

    def phi(x: np.ndarray) -> np.ndarray:
        d = x / 255 - level
        return 1 - d * (d >= 0.15)

    return float(np.sum(np.abs(phi(pred) - phi(gt))[region])) / 1000


def region_of(trimap: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    return np.ones(shape, dtype=bool) if trimap is None else trimap == 128


# --- SAD and MSE -----------------------------------------------------------------------------------------------------


def test_sad_mse_hand_computed_unknown_and_whole():
    pred = np.array([[0, 255], [128, 64]], dtype=np.uint8)
    gt = np.array([[0, 0], [255, 0]], dtype=np.uint8)
    trimap = np.array([[128, 128], [128, 0]], dtype=np.uint8)
    unknown = matting_image_metrics(pred, gt, trimap)
    # U = first three pixels; |diff| = 0, 255, 127 -> 382 / 255 / 1000
    assert unknown["SAD"] == pytest.approx(382 / 255 / 1000, rel=1e-12)
    # ((0)^2 + (255/255)^2 + (127/255)^2) / 3
    assert unknown["MSE"] == pytest.approx((0 + 1 + (127 / 255) ** 2) / 3, rel=1e-12)
    whole = matting_image_metrics(pred, gt)
    # all four pixels: |diff| = 0, 255, 127, 64 -> 446 / 255 / 1000; MSE / 4
    assert whole["SAD"] == pytest.approx(446 / 255 / 1000, rel=1e-12)
    assert whole["MSE"] == pytest.approx((1 + (127 / 255) ** 2 + (64 / 255) ** 2) / 4, rel=1e-12)
    assert set(unknown) == set(MATTING_KEYS)
    assert all(isinstance(value, float) for value in unknown.values())


def test_empty_unknown_region():
    pred = np.array([[0, 255]], dtype=np.uint8)
    trimap = np.array([[0, 255]], dtype=np.uint8)
    metrics = matting_image_metrics(pred, 255 - pred, trimap)
    assert metrics["SAD"] == 0 and metrics["Grad"] == 0 and metrics["Conn"] == 0
    assert math.isnan(metrics["MSE"])  # MATLAB's 0 / 0


def test_region_name_and_summary():
    assert matting_region(None) == "whole"
    assert matting_region(np.zeros((2, 2), np.uint8)) == "unknown"
    rows = [{"SAD": 1.0, "MSE": 0.5, "Grad": 2.0, "Conn": 4.0}, {"SAD": 3.0, "MSE": 1.5, "Grad": 0.0, "Conn": 0.0}]
    assert summarize_matting(rows) == {"SAD": 2.0, "MSE": 1.0, "Grad": 1.0, "Conn": 2.0}
    with pytest.raises(ValueError):
        summarize_matting([])


# --- quantisation and input checks ----------------------------------------------------------------------------------


def test_quantize_alpha_hand_cases():
    alpha = np.array([-0.2, 0.0, 0.2, 100.4 / 255, 100.6 / 255, 0.5, 1.0, 1.3])
    # 255 * a = -51 -> 0, 0, 51, 100.4 -> 100, 100.6 -> 101, 127.5 -> 128 (half to even), 255, 331.5 -> 255
    np.testing.assert_array_equal(quantize_alpha(alpha), [0, 0, 51, 100, 101, 128, 255, 255])
    assert quantize_alpha(alpha).dtype == np.uint8


def test_float_prediction_equals_its_quantisation():
    rng = np.random.default_rng(3)
    gt = cv2.GaussianBlur(rng.integers(0, 256, (40, 50)).astype(np.uint8), (0, 0), 2)
    pred8 = rng.integers(0, 256, (40, 50)).astype(np.uint8)
    pred8[0, 0], pred8[0, 1] = 0, 255
    trimap = rng.choice(np.array([0, 128, 255], np.uint8), size=(40, 50), p=[0.2, 0.6, 0.2])
    jitter = rng.uniform(-0.45, 0.45, pred8.shape)  # stays within the same rounding bin
    pred_float = (pred8 + jitter) / 255
    assert matting_image_metrics(pred_float, gt, trimap) == matting_image_metrics(pred8, gt, trimap)
    shifted = matting_image_metrics(np.clip(pred8.astype(int) + 1, 0, 255).astype(np.uint8), gt, trimap)
    assert shifted["SAD"] != matting_image_metrics(pred8, gt, trimap)["SAD"]


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        matting_image_metrics(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8))
    with pytest.raises(ValueError, match="trimap"):
        matting_image_metrics(np.zeros((2, 3), np.uint8), np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8))
    with pytest.raises(TypeError):
        matting_image_metrics(np.zeros((2, 3), bool), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError):
        matting_image_metrics(np.full((2, 3), np.nan), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError):
        matting_image_metrics(np.full((2, 3), 300, np.int32), np.zeros((2, 3), np.uint8))


# --- Grad ---------------------------------------------------------------------------------------------------------


def test_gradient_kernel_matches_gaussgradient():
    kernel = gradient_kernel()
    assert kernel.shape == (9, 9)  # halfsize = ceil(1.4 sqrt(-2 ln(sqrt(2 pi) 1.4 0.01))) = 4
    assert np.sum(kernel**2) == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_allclose(kernel, plain_gaussgradient_kernel(), rtol=1e-12, atol=1e-15)
    # true convolution of a horizontal unit ramp: interior response = -sum_ab h(a, b) (b - 4) = 9.684
    ramp = np.tile(np.arange(30, dtype=np.float64), (30, 1))
    along_x = plain_conv_replicate(ramp, kernel)
    along_y = plain_conv_replicate(ramp, kernel.T)
    assert round(float(along_x[15, 15]), 3) == 9.684
    assert along_x[15, 15] == pytest.approx(-np.sum(kernel * (np.arange(9) - 4)[None, :]), rel=1e-12)
    assert abs(along_y[15, 15]) < 1e-12  # hy = hx^T does not see a horizontal ramp


def test_grad_against_plain_convolution_small():
    rng = np.random.default_rng(7)
    gt = rng.integers(0, 256, (23, 31)).astype(np.uint8)
    pred = rng.integers(10, 200, (23, 31)).astype(np.uint8)  # not spanning 0..255: mat2gray rescales it
    trimap = rng.choice(np.array([0, 128, 255], np.uint8), size=(23, 31))
    got = matting_image_metrics(pred, gt, trimap)["Grad"]
    assert got == pytest.approx(plain_grad(pred, gt, trimap == 128), rel=1e-6)
    assert got > 0


def test_grad_of_constant_images_is_zero():
    flat = np.full((12, 12), 77, np.uint8)
    assert matting_image_metrics(flat, flat)["Grad"] == 0
    edge = np.zeros((12, 12), np.uint8)
    edge[:, 6:] = 255
    assert matting_image_metrics(flat, edge)["Grad"] == pytest.approx(plain_grad(flat, edge, region_of(None, (12, 12))))


# --- Conn ---------------------------------------------------------------------------------------------------------


def test_conn_threshold_153_counts_as_reaching_0_6():
    gt = np.array([[255]], np.uint8)
    # 153 / 255 = 0.6 reaches t_6: connected up to k = 6, B_7 empty -> level 0.6.
    # phi_pred = 1 (d = 0), phi_gt = 1 - (1 - 0.6) = 0.6 -> Conn = 0.4 / 1000
    np.testing.assert_array_equal(connectivity_levels(np.array([[153]], np.uint8), gt), [[6]])
    assert matting_image_metrics(np.array([[153]], np.uint8), gt)["Conn"] == pytest.approx(0.4 / 1000, rel=1e-6)
    # 152 / 255 < 0.6: level 0.5; phi_pred = 1 (d = 0.096), phi_gt = 1 - 0.5 -> Conn = 0.5 / 1000
    np.testing.assert_array_equal(connectivity_levels(np.array([[152]], np.uint8), gt), [[5]])
    assert matting_image_metrics(np.array([[152]], np.uint8), gt)["Conn"] == pytest.approx(0.5 / 1000, rel=1e-6)


def test_conn_empty_intersection_gives_empty_omega():
    pred = np.zeros((2, 4), np.uint8)
    gt = np.zeros((2, 4), np.uint8)
    pred[:, :2] = 255
    gt[:, 2:] = 255
    # B_1 is empty -> Omega empty -> every pixel settles at level 0: phi = 1 - alpha, so |phi_p - phi_g| = 1 on all
    # eight pixels (they all differ) -> Conn = 8 / 1000
    np.testing.assert_array_equal(connectivity_levels(pred, gt), np.zeros((2, 4)))
    assert matting_image_metrics(pred, gt)["Conn"] == pytest.approx(8 / 1000, rel=1e-6)


def tied_components_case() -> tuple[np.ndarray, np.ndarray]:
    """Two 2-pixel components: A at the top right (first in row-major order), B at the bottom left (first in
    column-major order); gt = 255 on both, pred = 255 on A and 166 (0.651) on B."""
    pred = np.zeros((4, 4), np.uint8)
    gt = np.zeros((4, 4), np.uint8)
    pred[0, 2:] = 255
    pred[3, :2] = 166
    gt[0, 2:] = 255
    gt[3, :2] = 255
    return pred, gt


def test_conn_tied_largest_components_follow_column_major_order():
    pred, gt = tied_components_case()
    # k = 1: A and B tie (2 pixels each); MATLAB keeps B (first in column-major order), so A and the background
    # settle at level 0. B stays in Omega up to k = 6; at k = 7 only A is left (already settled): B settles at 0.6.
    expected = np.zeros((4, 4), int)
    expected[3, :2] = 6
    np.testing.assert_array_equal(connectivity_levels(pred, gt), expected)
    np.testing.assert_array_equal(plain_levels(pred, gt), expected)
    # B: phi_pred = 1 (d = 0.051 < 0.15), phi_gt = 1 - 0.4 = 0.6 -> 0.4 on each of 2 pixels; A: d = 1, phi = 0 on
    # both; background: 0. (The row-major rule would keep A and give B level 0: 2 * 89 / 255 / 1000 instead.)
    assert matting_image_metrics(pred, gt)["Conn"] == pytest.approx(0.8 / 1000, rel=1e-6)


def test_conn_depends_on_pixels_outside_the_unknown_region():
    # Components are found on the whole image; only the sum is restricted to U.
    pred, gt = tied_components_case()
    trimap = np.zeros((4, 4), np.uint8)
    trimap[3, :2] = 128
    before = matting_image_metrics(pred, gt, trimap)["Conn"]
    pred_outside = pred.copy()
    pred_outside[1, 2] = 255  # outside U; A grows to 3 pixels and wins, B now settles at level 0
    gt_outside = gt.copy()
    gt_outside[1, 2] = 255
    after = matting_image_metrics(pred_outside, gt_outside, trimap)["Conn"]
    assert before == pytest.approx(0.8 / 1000, rel=1e-6)
    # B at level 0: phi_pred = 1 - 0.651, phi_gt = 0 -> 2 * 89 / 255 / 1000
    assert after == pytest.approx(2 * 89 / 255 / 1000, rel=1e-6)


values = st.sampled_from([0, 25, 26, 51, 52, 101, 102, 127, 152, 153, 154, 204, 229, 230, 255])


@settings(max_examples=300, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    data=st.data(),
)
def test_conn_and_grad_against_plain_random(shape, data):
    pred = data.draw(arrays(np.uint8, shape, elements=values))
    gt = data.draw(arrays(np.uint8, shape, elements=values))
    trimap = data.draw(arrays(np.uint8, shape, elements=st.sampled_from([0, 128, 255])))
    np.testing.assert_array_equal(connectivity_levels(pred, gt), plain_levels(pred, gt))
    metrics = matting_image_metrics(pred, gt, trimap)
    region = trimap == 128
    assert metrics["Conn"] == pytest.approx(plain_conn(pred, gt, region), rel=1e-5, abs=1e-9)
    assert metrics["Grad"] == pytest.approx(plain_grad(pred, gt, region), rel=1e-5, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(st.integers(2, 12), st.integers(2, 12)), data=st.data())
def test_conn_levels_binary_blobs(shape, data):
    # many equal-sized components: exercises the tie rule
    mask = data.draw(arrays(np.bool_, shape))
    pred = np.where(mask, 255, 0).astype(np.uint8)
    gt = data.draw(arrays(np.uint8, shape, elements=st.sampled_from([0, 153, 255])))
    np.testing.assert_array_equal(connectivity_levels(pred, gt), plain_levels(pred, gt))


# --- real images --------------------------------------------------------------------------------------------------


def load_real(name: str, trimap_dir: str = "trimap1") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not REALDATA.is_dir():
        pytest.skip(f"real data not present at {REALDATA}")
    gt = cv2.imread(str(REALDATA / "alpha" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
    trimap = cv2.imread(str(REALDATA / trimap_dir / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
    rng = np.random.default_rng(int(name[2:]))
    blurred = cv2.GaussianBlur(gt.astype(np.float64), (0, 0), 2.0)
    pred = np.clip(np.rint(blurred + rng.normal(0, 6, gt.shape)), 0, 255).astype(np.uint8)
    return pred, gt, trimap


@pytest.mark.parametrize(("name", "trimap_dir"), [("GT01", "trimap1"), ("GT05", "trimap2")])
def test_real_images_crop_against_plain(name, trimap_dir):
    pred, gt, trimap = load_real(name, trimap_dir)
    # the 120x160 window with the most unknown pixels (the plain implementation is slow on whole images)
    density = cv2.boxFilter((trimap == 128).astype(np.float64), -1, (160, 120), normalize=False)
    row, col = np.unravel_index(np.argmax(density), density.shape)
    top = min(max(int(row) - 60, 0), trimap.shape[0] - 120)
    left = min(max(int(col) - 80, 0), trimap.shape[1] - 160)
    window = np.s_[top : top + 120, left : left + 160]
    pred, gt, trimap = pred[window], gt[window], trimap[window]
    assert np.count_nonzero(trimap == 128) > 2000
    np.testing.assert_array_equal(connectivity_levels(pred, gt), plain_levels(pred, gt))
    metrics = matting_image_metrics(pred, gt, trimap)
    assert metrics["Conn"] == pytest.approx(plain_conn(pred, gt, trimap == 128), rel=1e-5)
    assert metrics["Grad"] == pytest.approx(plain_grad(pred, gt, trimap == 128), rel=1e-5)


@pytest.mark.parametrize("name", ["GT02", "GT13", "GT27"])
def test_real_images_region_rules(name):
    pred, gt, trimap = load_real(name)
    pred[0, 0], pred[0, 1] = 0, 255  # pred spans 0..255: mat2gray leaves it as pred / 255
    unknown = trimap == 128
    metrics = matting_image_metrics(pred, gt, trimap)
    assert all(np.isfinite(value) and value > 0 for value in metrics.values())

    # SAD and MSE see only U: anything may change outside
    rng = np.random.default_rng(0)
    scrambled = np.where(unknown, pred, rng.integers(0, 256, pred.shape)).astype(np.uint8)
    other = matting_image_metrics(scrambled, gt, trimap)
    assert other["SAD"] == metrics["SAD"] and other["MSE"] == metrics["MSE"]

    # Grad sees U and its 4-pixel kernel border (plus the global min / max of mat2gray)
    near = cv2.dilate(unknown.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    far = np.where(near, pred, rng.integers(0, 256, pred.shape)).astype(np.uint8)
    far[0, 0], far[0, 1] = 0, 255
    assert not near[0, 0] and not near[0, 1]
    assert matting_image_metrics(far, gt, trimap)["Grad"] == metrics["Grad"]
    too_close = pred.copy()
    ring = near & ~unknown
    too_close[ring] = 255 - too_close[ring]
    assert matting_image_metrics(too_close, gt, trimap)["Grad"] != metrics["Grad"]

    # An all-unknown trimap is the whole-image evaluation
    whole = matting_image_metrics(pred, gt)
    assert matting_image_metrics(pred, gt, np.full_like(trimap, 128)) == whole
    assert whole["SAD"] > metrics["SAD"]
