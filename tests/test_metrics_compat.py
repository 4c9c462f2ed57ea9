"""The seed systems' own numbers (TSR, TwinSwin, DCP) against direct implementations of their definitions."""

import cv2
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.measure import label, regionprops

from jaxmatte.metrics.compat import (
    COMPAT_KEYS,
    compat_image_metrics,
    dcp_image_metrics,
    letterbox,
    summarize_compat,
    tsr_quantize,
    twinswin_image_metrics,
)
from jaxmatte.metrics.matting import gradient_kernel, matting_image_metrics


def test_keys_and_system_names():
    assert COMPAT_KEYS["TSR"] == ("TSR_LogSAD", "TSR_RealSAD", "TSR_MAE", "TSR_MSEx1000")
    assert COMPAT_KEYS["TwinSwin"] == (
        "TwinSwin_SAD1024",
        "TwinSwin_MSE1024",
        "TwinSwin_SobelGrad1024",
        "TwinSwin_Acc1024",
        "TwinSwin_MAE1024",
    )
    assert COMPAT_KEYS["DCP"] == ("DCP_SAD", "DCP_MSE", "DCP_Grad", "DCP_Conn")
    gt = np.zeros((4, 5), np.uint8)
    for system, keys in COMPAT_KEYS.items():
        assert tuple(compat_image_metrics(system.lower(), gt, gt)) == keys
    with pytest.raises(ValueError, match="unknown system"):
        compat_image_metrics("ViTMatte", gt, gt)


def test_summaries_are_means_over_images():
    rows = [dict.fromkeys(COMPAT_KEYS["DCP"], 1.0), dict.fromkeys(COMPAT_KEYS["DCP"], 4.0)]
    assert summarize_compat("DCP", rows) == dict.fromkeys(COMPAT_KEYS["DCP"], 2.5)
    with pytest.raises(ValueError):
        summarize_compat("TSR", [])


# --- TSR-Matte ----------------------------------------------------------------------------------------------------


def test_tsr_hand_computed_truncation():
    gt = np.array([[255, 0]], np.uint8)
    prob = np.array([[0.999, 0.004]], np.float32)
    # x255 = 254.745 -> 254 and 1.02 -> 1 (truncated); |diff| = 1/255 on both pixels
    np.testing.assert_array_equal(tsr_quantize(prob, gt.shape), [[254, 1]])
    row = compat_image_metrics("TSR", prob, gt)
    assert row["TSR_MAE"] == pytest.approx(1 / 255, rel=1e-6)
    assert row["TSR_LogSAD"] == pytest.approx(1000 / 255, rel=1e-6)
    assert row["TSR_RealSAD"] == pytest.approx(2 / 255, rel=1e-6)
    assert row["TSR_MSEx1000"] == pytest.approx(1000 / 255**2, rel=1e-6)


def test_tsr_against_direct_implementation():
    rng = np.random.default_rng(0)
    rows, expected = [], []
    for gt_shape, prob_shape in [((50, 70), (37, 53)), ((32, 32), (32, 32))]:
        gt = rng.integers(0, 256, gt_shape).astype(np.uint8)
        prob = rng.random(prob_shape).astype(np.float32)
        resized = cv2.resize(prob, (gt_shape[1], gt_shape[0]), interpolation=cv2.INTER_LINEAR)
        p = (resized * 255).astype(np.uint8).astype(np.float32) / 255.0
        g = gt.astype(np.float32) / 255.0
        mae = float(np.mean(np.abs(p - g)))
        expected.append((float(np.sum(np.abs(p - g))), mae, float(np.mean((p - g) ** 2))))
        rows.append(compat_image_metrics("TSR", prob, gt))
        assert rows[-1]["TSR_RealSAD"] == pytest.approx(expected[-1][0], rel=1e-6)
        assert rows[-1]["TSR_MAE"] == pytest.approx(mae, rel=1e-6)
    summary = summarize_compat("TSR", rows)
    assert summary["TSR_RealSAD"] == pytest.approx(np.mean([e[0] for e in expected]), rel=1e-6)
    assert summary["TSR_MAE"] == pytest.approx(np.mean([e[1] for e in expected]), rel=1e-6)
    assert summary["TSR_LogSAD"] == pytest.approx(1000 * np.mean([e[1] for e in expected]), rel=1e-6)
    assert summary["TSR_MSEx1000"] == pytest.approx(1000 * np.mean([e[2] for e in expected]), rel=1e-6)
    with pytest.raises(ValueError):
        compat_image_metrics("TSR", np.zeros((3, 3), np.uint8), np.zeros((4, 4), np.uint8))


# --- TwinSwin-Matte -----------------------------------------------------------------------------------------------


def test_letterbox_geometry():
    # 300x500 -> s = 1024 / 500 = 2.048: 614.4 -> 614 rows, 1024 columns; top = (1024 - 614) // 2 = 205
    canvas = letterbox(np.full((300, 500), 255, np.uint8), 1024, cv2.INTER_NEAREST)
    assert canvas.shape == (1024, 1024)
    filled_rows = np.flatnonzero(canvas.any(axis=1))
    assert (filled_rows[0], filled_rows[-1]) == (205, 205 + 614 - 1)
    assert canvas[205:819].min() == 255
    # 4x1 on a 10 canvas: s = 2.5, width 2.5 -> 2 (half to even), left = (10 - 2) // 2 = 4
    tall = letterbox(np.full((4, 1), 7, np.uint8), 10, cv2.INTER_NEAREST)
    np.testing.assert_array_equal(np.flatnonzero(tall.any(axis=0)), [4, 5])
    # 3x7 on an 8 canvas: s = 8 / 7, height 3.43 -> 3; top = (8 - 3) // 2 = 2, the odd pixel goes to the bottom
    wide = letterbox(np.full((3, 7), 9, np.uint8), 8, cv2.INTER_NEAREST)
    np.testing.assert_array_equal(np.flatnonzero(wide.any(axis=1)), [2, 3, 4])


def test_twinswin_hand_computed_padding_included():
    gt = np.full((300, 500), 255, np.uint8)
    pred = np.ones((1024, 1024), np.float32)
    row = twinswin_image_metrics(pred, gt)
    # the 410 padded rows (g = 0, p = 1) are counted: sum = 410 * 1024 = 419840
    assert row["TwinSwin_SAD1024"] == pytest.approx(419.84, rel=1e-9)
    assert row["TwinSwin_MAE1024"] == pytest.approx(410 / 1024, rel=1e-9)
    assert row["TwinSwin_MSE1024"] == pytest.approx(410 / 1024, rel=1e-9)
    assert row["TwinSwin_Acc1024"] == pytest.approx((1 - 410 / 1024) * 100, rel=1e-9)


def direct_sobel_magnitude(x: np.ndarray) -> np.ndarray:
    """F.conv2d (cross-correlation) with the Sobel kernels and zero padding 1."""
    sx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)
    sy = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], np.float64)
    padded = np.pad(x.astype(np.float64), 1)
    height, width = x.shape
    gx = np.zeros((height, width))
    gy = np.zeros((height, width))
    for a in range(3):
        for b in range(3):
            window = padded[a : a + height, b : b + width]
            gx += sx[a, b] * window
            gy += sy[a, b] * window
    return np.sqrt(gx**2 + gy**2 + 1e-8)


def test_twinswin_against_direct_implementation():
    rng = np.random.default_rng(1)
    gt = cv2.GaussianBlur(rng.integers(0, 256, (300, 420)).astype(np.uint8), (0, 0), 3)
    pred = cv2.GaussianBlur(rng.random((1024, 1024)).astype(np.float32), (0, 0), 2)
    # direct letterbox: scale 1024 / 420, 300 -> round(731.43) = 731 rows, top = 146
    g = np.zeros((1024, 1024), np.float32)
    g[146 : 146 + 731] = cv2.resize(gt, (1024, 731), interpolation=cv2.INTER_NEAREST) / 255.0
    diff = pred.astype(np.float64) - g
    grad = np.mean((direct_sobel_magnitude(pred) - direct_sobel_magnitude(g)) ** 2) * 1000
    row = compat_image_metrics("TwinSwin", pred, gt)
    assert row["TwinSwin_SAD1024"] == pytest.approx(np.abs(diff).sum() / 1000, rel=1e-6)
    assert row["TwinSwin_MSE1024"] == pytest.approx(np.mean(diff**2), rel=1e-6)
    assert row["TwinSwin_SobelGrad1024"] == pytest.approx(grad, rel=1e-4)
    assert row["TwinSwin_MAE1024"] == pytest.approx(np.mean(np.abs(diff)), rel=1e-6)
    assert row["TwinSwin_Acc1024"] == pytest.approx((1 - np.mean(np.abs(diff))) * 100, rel=1e-9)
    # a prediction at the GT size is letterboxed (bilinear) onto the same canvas
    pred_small = rng.integers(0, 256, gt.shape).astype(np.uint8)
    on_canvas = letterbox(pred_small, 1024, cv2.INTER_LINEAR)
    assert twinswin_image_metrics(pred_small, gt) == twinswin_image_metrics(on_canvas, gt)
    with pytest.raises(ValueError):
        twinswin_image_metrics(np.zeros((512, 512), np.float32), gt)


# --- DCP ----------------------------------------------------------------------------------------------------------


def direct_dcp(pred: np.ndarray, alpha: np.ndarray, trimap: np.ndarray) -> dict[str, float]:
    """DCP test.py / utils.py, written out: forced known regions, whole-image SAD, MSE over |U|, gaussian_filter Grad,
    Conn with skimage labels and float64 arange thresholds."""
    pred = pred.copy()
    pred[trimap == 0] = 0.0
    pred[trimap == 255] = 1.0
    mask = (trimap == 128).astype(np.float64)

    def amplitude(x):
        gx = gaussian_filter(x, sigma=1.4, order=[1, 0], output=np.float32)
        gy = gaussian_filter(x, sigma=1.4, order=[0, 1], output=np.float32)
        return np.sqrt(gx**2 + gy**2)

    steps = np.arange(0, 1.1, 0.1)
    level = -np.ones(pred.shape, np.float32)
    for i in range(1, steps.size):
        threshold_pred = pred.dtype.type(steps[i])  # NumPy 1.x scalar casting
        regions = regionprops(label((pred >= threshold_pred) & (alpha >= steps[i]), connectivity=1))
        if not regions:
            continue
        biggest = regions[int(np.argmax([r.area for r in regions]))].coords
        omega = np.zeros(pred.shape, bool)
        omega[biggest[:, 0], biggest[:, 1]] = True
        level[(level == -1) & ~omega] = steps[i - 1]
    level[level == -1] = 1
    d_pred, d_alpha = pred - level, alpha - level
    phi_pred = 1 - d_pred * (d_pred >= 0.15).astype(np.float32)
    phi_alpha = 1 - d_alpha * (d_alpha >= 0.15).astype(np.float32)
    return {
        "DCP_SAD": np.abs(pred - alpha).sum() / 1000,
        "DCP_MSE": ((pred - alpha) ** 2).sum() / mask.sum(),
        "DCP_Grad": np.sum((amplitude(pred) - amplitude(alpha)) ** 2 * mask) / 10,
        "DCP_Conn": np.sum(np.abs(phi_pred - phi_alpha) * mask) / 1000,
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dcp_against_direct_implementation_random_floats(dtype):
    rng = np.random.default_rng(5)
    for _ in range(4):
        gt = cv2.GaussianBlur(rng.integers(0, 256, (30, 40)).astype(np.uint8), (0, 0), 1.5)
        gt[rng.random(gt.shape) < 0.1] = 153
        pred = np.clip(gt / 255 + rng.normal(0, 0.1, gt.shape), 0, 1).astype(dtype)
        pred[rng.random(gt.shape) < 0.1] = dtype(153 / 255)
        trimap = rng.choice(np.array([0, 128, 255], np.uint8), size=gt.shape, p=[0.2, 0.6, 0.2])
        got = compat_image_metrics("DCP", pred, gt, trimap)
        expected = direct_dcp(pred, gt / 255.0, trimap)
        for key in COMPAT_KEYS["DCP"]:
            assert got[key] == pytest.approx(expected[key], rel=1e-9), key


def test_dcp_sad_mse_hand_computed():
    pred = np.array([[0.5, 0.25, 0.0]])
    gt = np.array([[0, 0, 255]], np.uint8)
    trimap = np.array([[128, 255, 128]], np.uint8)
    row = dcp_image_metrics(pred, gt, trimap)
    # forced: pred[1] = 1; |diff| = 0.5, 1, 1 -> SAD = 2.5 / 1000; MSE = (0.25 + 1 + 1) / |U| = 2.25 / 2
    assert row["DCP_SAD"] == pytest.approx(2.5 / 1000)
    assert row["DCP_MSE"] == pytest.approx(2.25 / 2)


def test_dcp_conn_arange_quirk_at_153():
    gt = np.array([[255, 255]], np.uint8)
    pred = np.array([[1.0, 153 / 255]])
    # official: 153 reaches t_6 -> the second pixel settles at 0.6: phi_pred = 1 (d = 0), phi_gt = 0.6 -> 0.4 / 1000
    assert matting_image_metrics(pred, gt)["Conn"] == pytest.approx(0.4 / 1000, rel=1e-6)
    # DCP: 0.6 >= arange(...)[6] = 0.6000000000000001 is False -> it settles at 0.5: phi_gt = 0.5 -> 0.5 / 1000
    assert np.arange(0, 1.1, 0.1)[6] > 153 / 255
    assert dcp_image_metrics(pred, gt)["DCP_Conn"] == pytest.approx(0.5 / 1000, rel=1e-6)
    # one level higher both agree (level 0.6 for both)
    pred_154 = np.array([[1.0, 154 / 255]])
    assert dcp_image_metrics(pred_154, gt)["DCP_Conn"] == pytest.approx(
        matting_image_metrics(pred_154, gt)["Conn"], rel=1e-6
    )
    # a float32 prediction is compared in float32 (NumPy 1.x casting): 0.6f reaches the threshold, no quirk
    pred_f32 = pred.astype(np.float32)
    assert dcp_image_metrics(pred_f32, gt)["DCP_Conn"] == pytest.approx(0.4 / 1000, rel=1e-6)
    # float32(0.9) = 0.89999998 < 0.9 reaches arange(...)[9] only in float32: level 0.9 for the second pixel, where
    # d_pred = 0 and d_gt = 0.1 < 0.15 give phi = 1 on both (a float64 comparison would give level 0.8 and 0.2 / 1000)
    assert dcp_image_metrics(np.array([[1.0, 0.9]], np.float32), gt)["DCP_Conn"] == 0
    # the target is always float64 in DCP: a 153 in the GT shows the quirk whatever the prediction
    assert dcp_image_metrics(np.array([[1.0, 1.0]], np.float32), np.array([[255, 153]], np.uint8))[
        "DCP_Conn"
    ] == pytest.approx(0.5 / 1000, rel=1e-6)


def test_dcp_conn_skips_empty_thresholds():
    pred = np.zeros((2, 4), np.uint8)
    gt = np.zeros((2, 4), np.uint8)
    pred[:, :2] = 255
    gt[:, 2:] = 255
    # official: Omega = empty at k = 1, every pixel at level 0 -> 8 / 1000; DCP keeps level -1 -> 1: phi = 1 on both
    assert matting_image_metrics(pred, gt)["Conn"] == pytest.approx(8 / 1000, rel=1e-6)
    assert dcp_image_metrics(pred / 255.0, gt)["DCP_Conn"] == 0


def test_dcp_conn_row_major_tie_rule():
    pred = np.zeros((4, 4), np.uint8)
    gt = np.zeros((4, 4), np.uint8)
    pred[0, 2:], gt[0, 2:] = 255, 255  # A: first in row-major order
    pred[3, :2], gt[3, :2] = 166, 255  # B: first in column-major order
    # official keeps B at k = 1..6 (B ends at 0.6: 0.4 per pixel); DCP keeps A (B at level 0: 1 - 166/255 per pixel)
    assert matting_image_metrics(pred, gt)["Conn"] == pytest.approx(0.8 / 1000, rel=1e-6)
    assert dcp_image_metrics(pred / 255.0, gt)["DCP_Conn"] == pytest.approx(2 * 89 / 255 / 1000, rel=1e-6)


def test_dcp_grad_is_about_1_07_times_official_on_smooth_alpha():
    rows, cols = np.mgrid[:128, :128]
    radius = np.hypot(rows - 64, cols - 64)
    gt = np.rint(255 / (1 + np.exp((radius - 35) / 4))).astype(np.uint8)
    pred = np.rint(255 / (1 + np.exp((radius - 37) / 5))).astype(np.uint8)
    assert gt.min() == pred.min() == 0 and gt.max() == pred.max() == 255  # mat2gray is the identity / 255
    official = matting_image_metrics(pred, gt)["Grad"]
    dcp = dcp_image_metrics(pred / 255.0, gt)["DCP_Grad"]
    # /10 on unit-gain derivatives versus /1000 on a kernel of ramp gain 9.684: ratio 100 / 9.684^2 = 1.066
    kernel = gradient_kernel()
    gain = -np.sum(kernel * (np.arange(9) - 4)[None, :])
    assert dcp / official == pytest.approx(100 / gain**2, rel=0.02)
    assert 1.04 < dcp / official < 1.09
