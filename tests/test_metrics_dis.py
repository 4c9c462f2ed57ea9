"""DIS / salient-object metrics: pysodmetrics 1.6.2 agreement, a direct reading of the DIS HCE rule, reductions."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.measure import label
from skimage.morphology import skeletonize

from jaxmatte.metrics import (
    DIS_KEYS,
    dis_image_row,
    dis_image_stats,
    evaluate_dis_pairs,
    resize_to_gt,
    summarize_dis,
)

py_sod_metrics = pytest.importorskip("py_sod_metrics")

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "alphamatting_training_lowres"
ATOL = 1e-6
CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------------------------
# Reference values and data


def reference_results(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[dict[str, float], list[dict]]:
    """pysodmetrics' dataset numbers (DIS_KEYS) and per-image curves / scalars for the same pairs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure's deprecation notice; empty-slice warnings of the NaN case
        fm = py_sod_metrics.Fmeasure()
        wfm = py_sod_metrics.WeightedFmeasure()
        sm = py_sod_metrics.Smeasure()
        em = py_sod_metrics.Emeasure()
        mae = py_sod_metrics.MAE()
        hce = py_sod_metrics.HumanCorrectionEffortMeasure()
        for pred, gt in pairs:
            for metric in (fm, wfm, sm, em, mae, hce):
                metric.step(pred, gt)
        fm_results, em_results = fm.get_results(), em.get_results()["em"]
    dataset = {
        "maxFm": fm_results["fm"]["curve"].max(),
        "wFmeasure": wfm.get_results()["wfm"],
        "MAE": mae.get_results()["mae"],
        "Smeasure": sm.get_results()["sm"],
        "meanEm": em_results["curve"].mean(),
        "HCE": hce.get_results()["hce"],
        "maxEm": em_results["curve"].max(),
        "meanFm": fm_results["fm"]["curve"].mean(),
        "adpEm": em_results["adp"],
        "adpFm": fm_results["fm"]["adp"],
    }
    per_image = [
        {
            "fm_curve": fm.changeable_fms[i],
            "precision": fm.precisions[i],
            "recall": fm.recalls[i],
            "em_curve": em.changeable_ems[i],
            "adp_fm": fm.adaptive_fms[i],
            "adp_em": em.adaptive_ems[i],
            "wfm": wfm.weighted_fms[i],
            "sm": sm.sms[i],
            "mae": mae.maes[i],
            "hce": hce.hces[i],
        }
        for i in range(len(pairs))
    ]
    return {key: float(value) for key, value in dataset.items()}, per_image


def close(a: float, b: float, atol: float = ATOL) -> bool:
    """Equal within atol (and a relative 1e-12 for the huge E-measure values of 1-pixel-ish images), NaN == NaN."""
    if np.isnan(a) or np.isnan(b):
        return bool(np.isnan(a) and np.isnan(b))
    return abs(a - b) <= atol + 1e-12 * abs(b)


def assert_agrees_with_reference(pairs: list[tuple[np.ndarray, np.ndarray]]) -> list:
    """Every key, every per-image curve and scalar against pysodmetrics; HCE exactly (pysodmetrics binarisation)."""
    stats = [dis_image_stats(pred, gt, hce_binarize="pysodmetrics") for pred, gt in pairs]
    ours = summarize_dis(stats)
    reference, per_image = reference_results(pairs)
    assert list(ours) == list(DIS_KEYS)
    for key in DIS_KEYS:
        assert close(ours[key], reference[key]), (key, ours[key], reference[key])
    assert ours["HCE"] == reference["HCE"]
    for mine, ref in zip(stats, per_image, strict=True):
        np.testing.assert_allclose(mine.fm_curve, ref["fm_curve"], rtol=0, atol=ATOL)
        np.testing.assert_allclose(mine.precision_curve, ref["precision"], rtol=0, atol=ATOL)
        np.testing.assert_allclose(mine.recall_curve, ref["recall"], rtol=0, atol=ATOL)
        np.testing.assert_allclose(mine.em_curve, ref["em_curve"], rtol=1e-12, atol=ATOL)
        for field in ("adp_fm", "adp_em", "wfm", "sm", "mae"):
            assert close(getattr(mine, field), float(ref[field])), (field, getattr(mine, field), ref[field])
        assert mine.hce == ref["hce"]
    return stats


def blob_gt(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Random smooth blobs (several components, concavities) as a 0/255 GT."""
    noise = cv2.GaussianBlur(rng.random((height, width)), (0, 0), max(height, width) / 12)
    return np.where(noise > np.quantile(noise, rng.uniform(0.4, 0.85)), 255, 0).astype(np.uint8)


def soft_prediction(rng: np.random.Generator, gt: np.ndarray, blur: float = 2.0, noise: float = 25.0) -> np.ndarray:
    soft = cv2.GaussianBlur(gt.astype(np.float64), (0, 0), blur) + rng.normal(0, noise, gt.shape)
    return np.clip(np.rint(soft), 0, 255).astype(np.uint8)


def thin_structures(height: int, width: int) -> np.ndarray:
    gt = np.zeros((height, width), np.uint8)
    gt[height // 3, 4 : width - 4] = 255  # horizontal 1-pixel line
    gt[4 : height - 4, width // 4] = 255  # vertical line crossing it
    for i in range(min(height, width) - 10):  # 1-pixel diagonal
        gt[5 + i, 5 + i] = 255
    cv2.circle(gt, (3 * width // 4, 2 * height // 3), min(height, width) // 6, 255, 1)  # thin ring (has a hole)
    return gt


def holed_objects(height: int, width: int) -> np.ndarray:
    gt = np.zeros((height, width), np.uint8)
    cv2.rectangle(gt, (5, 5), (width // 2, height - 6), 255, -1)
    cv2.rectangle(gt, (12, 14), (width // 2 - 8, height // 2), 0, -1)  # a hole
    cv2.circle(gt, (12 + (width // 2 - 20) // 2, 3 * height // 4), 3, 0, -1)  # a second hole
    cv2.circle(gt, (3 * width // 4, height // 2), min(height, width) // 4, 255, -1)
    cv2.circle(gt, (3 * width // 4, height // 2), min(height, width) // 10, 0, -1)  # donut
    return gt


# ----------------------------------------------------------------------------------------------------------------------
# Agreement with pysodmetrics


def test_random_predictions_on_random_blobs():
    rng = np.random.default_rng(0)
    pairs = []
    for height, width in ((64, 96), (97, 61), (128, 128), (50, 170)):
        gt = blob_gt(rng, height, width)
        pairs.append((rng.integers(0, 256, (height, width), dtype=np.uint8), gt))  # pure noise
        pairs.append((soft_prediction(rng, gt), gt))  # a plausible soft prediction
        pairs.append((soft_prediction(rng, blob_gt(rng, height, width), blur=4.0, noise=10.0), gt))  # a wrong one
    assert_agrees_with_reference(pairs)


@pytest.mark.parametrize(
    "case",
    [
        "all_background_gt",
        "all_background_gt_zero_pred",
        "all_foreground_gt",
        "constant_prediction",
        "constant_prediction_background_quadrant",
        "zero_prediction",
        "full_prediction",
        "binary_prediction",
        "perfect_binary_prediction",
        "thin_structures",
        "objects_with_holes",
        "low_contrast_prediction",
        "gt_touching_borders",
    ],
)
def test_structured_cases(case):
    rng = np.random.default_rng(sum(map(ord, case)))
    height, width = 72, 88
    gt = blob_gt(rng, height, width)
    soft = soft_prediction(rng, gt)
    corner_box = np.zeros_like(gt)
    corner_box[40:60, 50:80] = 255
    pairs = {
        "all_background_gt": [(soft, np.zeros_like(gt)), (rng.integers(0, 256, gt.shape, dtype=np.uint8), gt * 0)],
        "all_background_gt_zero_pred": [(np.zeros_like(gt), np.zeros_like(gt))],
        "all_foreground_gt": [(soft, np.full_like(gt, 255)), (np.full_like(gt, 200), np.full_like(gt, 255))],
        "constant_prediction": [(np.full_like(gt, value), gt) for value in (1, 77, 128, 200)],
        # An all-background quadrant under a constant map: the reference's SSIM is 1 or 0 depending on whether its
        # floating-point mean of the constant equals the constant (5/255: not equal here, 6/255: equal).
        "constant_prediction_background_quadrant": [(np.full_like(gt, value), corner_box) for value in (5, 6)],
        "zero_prediction": [(np.zeros_like(gt), gt)],
        "full_prediction": [(np.full_like(gt, 255), gt)],
        "binary_prediction": [(np.where(soft > 128, 255, 0).astype(np.uint8), gt), ((soft > 90).astype(np.uint8), gt)],
        "perfect_binary_prediction": [(gt.copy(), gt)],
        "thin_structures": [
            (cv2.dilate(thin_structures(height, width), CROSS), thin_structures(height, width)),
            (np.roll(thin_structures(height, width), 1, axis=1), thin_structures(height, width)),
            (soft_prediction(rng, thin_structures(height, width), blur=0.7), thin_structures(height, width)),
        ],
        "objects_with_holes": [
            (soft_prediction(rng, holed_objects(height, width)), holed_objects(height, width)),
            (cv2.erode(holed_objects(height, width), CROSS, iterations=2), holed_objects(height, width)),
        ],
        "low_contrast_prediction": [
            ((100 + soft // 40).astype(np.uint8), gt),  # levels 100..106: min-max normalisation matters
            ((120 + (soft > 128) * 9).astype(np.uint8), gt),  # two levels straddling 128
        ],
        "gt_touching_borders": [
            (soft_prediction(rng, np.pad(gt[8:-8, 8:-8], 8, mode="edge")), np.pad(gt[8:-8, 8:-8], 8, mode="edge"))
        ],
    }[case]
    assert_agrees_with_reference(pairs)


def test_empty_quadrant_s_measure_is_nan_like_reference():
    # Foreground only on the last row: the centroid rounds to row H - 1, the 1-based split is H, the bottom quadrants
    # are empty and pysodmetrics' S-measure is NaN.
    gt = np.zeros((8, 10), np.uint8)
    gt[7, 2:6] = 255
    pred = np.random.default_rng(1).integers(0, 256, gt.shape, dtype=np.uint8)
    with pytest.warns(RuntimeWarning, match="S-measure"):
        stats = assert_agrees_with_reference([(pred, gt)])
    assert np.isnan(stats[0].sm)
    assert not np.isnan(stats[0].wfm) and not np.isnan(stats[0].mae)


def test_real_masks():
    if not (REALDATA / "alpha").is_dir():
        pytest.skip(f"real data not found at {REALDATA}")
    rng = np.random.default_rng(2)
    pairs = []
    for name in ("GT02.png", "GT13.png", "GT25.png"):
        alpha = cv2.imread(str(REALDATA / "alpha" / name), cv2.IMREAD_GRAYSCALE)
        assert alpha is not None, name
        alpha = cv2.resize(alpha, (alpha.shape[1] // 2, alpha.shape[0] // 2), interpolation=cv2.INTER_AREA)
        gt = np.where(alpha > 128, 255, 0).astype(np.uint8)
        pairs.append((soft_prediction(rng, alpha, blur=3.0, noise=20.0), gt))
    assert_agrees_with_reference(pairs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    shape=st.tuples(st.integers(2, 12), st.integers(2, 12)),
)
def test_tiny_images_property(data, shape):
    """Agreement on arbitrary tiny images (single rows and columns, 1-pixel objects, level 128, constant maps)."""
    levels = st.sampled_from([0, 1, 127, 128, 129, 200, 255])
    gt = data.draw(arrays(np.uint8, shape, elements=st.sampled_from([0, 128, 129, 255])))
    pred = data.draw(arrays(np.uint8, shape, elements=levels | st.integers(0, 255)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the empty-quadrant warning
        assert_agrees_with_reference([(pred, gt)])


# ----------------------------------------------------------------------------------------------------------------------
# Dataset reduction


def test_max_f_uses_the_mean_curve_not_mean_of_per_image_maxima():
    # Image A is best at a strict threshold, image B at a loose one: max of the mean curve < mean of the maxima.
    gt = np.zeros((40, 40), np.uint8)
    gt[10:30, 10:30] = 255
    pred_a = np.where(gt > 0, 250, 0).astype(np.uint8)
    pred_a[0:10, :] = 200  # false positives below level 250 only
    pred_b = np.where(gt > 0, 60, 0).astype(np.uint8)
    pred_b[0, 0] = 255  # one bright false positive so the object sits at a low normalised level
    pairs = [(pred_a, gt), (pred_b, gt)]
    stats = assert_agrees_with_reference(pairs)
    reference, _ = reference_results(pairs)
    summary = summarize_dis(stats)
    mean_of_maxima = float(np.mean([s.fm_curve.max() for s in stats]))
    assert close(summary["maxFm"], reference["maxFm"])
    assert mean_of_maxima - summary["maxFm"] > 0.05
    assert summary["meanEm"] == pytest.approx(np.mean([s.em_curve for s in stats]))


def test_image_row_and_summary_of_one_image():
    rng = np.random.default_rng(3)
    gt = blob_gt(rng, 48, 64)
    stats = dis_image_stats(soft_prediction(rng, gt), gt)
    row = dis_image_row(stats)
    assert set(row) == {"MAE", "wFmeasure", "Smeasure", "HCE", "maxFm", "meanEm"}
    summary = summarize_dis([stats])
    for key in row:
        assert row[key] == pytest.approx(summary[key], abs=1e-15)
    assert isinstance(stats.hce, int)


def test_parallel_evaluation_matches_serial():
    rng = np.random.default_rng(4)
    gts = [blob_gt(rng, 40 + 7 * i, 56) for i in range(5)]
    pairs = [(soft_prediction(rng, gt), gt) for gt in gts]
    serial = evaluate_dis_pairs(pairs, workers=1)
    parallel = evaluate_dis_pairs(iter(pairs), workers=2)
    assert summarize_dis(parallel) == summarize_dis(serial)
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a.fm_curve, b.fm_curve)
        assert a.hce == b.hce and a.wfm == b.wfm


# ----------------------------------------------------------------------------------------------------------------------
# HCE binarisation rules


def direct_dis_hce(gt_u8: np.ndarray, pred_u8: np.ndarray, relax: int = 5, epsilon: float = 2.0) -> int:
    """HCE as the spec's §1.9 reads, with the DIS rule (gt > 128, pred > 128), walking contours point by point."""
    gt, pred = gt_u8 > 128, pred_u8 > 128
    skeleton = skeletonize(gt)
    tp, fp, fn = gt & pred, pred & ~gt, gt & ~pred
    eroded = cv2.erode((gt | pred).astype(np.uint8), CROSS, iterations=relax).astype(bool)
    fp_r = fp & eroded
    for _ in range(relax):
        fp_r = cv2.dilate(fp_r.astype(np.uint8), CROSS).astype(bool) & ~gt
    fp_r &= fp
    fn_r = fn & eroded
    for _ in range(relax):
        fn_r = cv2.dilate(fn_r.astype(np.uint8), CROSS).astype(bool) & ~pred
    fn_r = (fn_r & fn) | (skeleton & ~tp)

    def side(mask: np.ndarray, condition: np.ndarray) -> int:
        condition = cv2.dilate(condition.astype(np.uint8), CROSS).astype(bool)
        labels = label(mask, connectivity=2)
        independent = set(range(1, labels.max() + 1))
        visited = np.zeros(mask.shape, bool)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
        segments = []
        for contour in contours:
            found, current = [], []
            for x, y in contour[:, 0]:
                if condition[y, x] and not visited[y, x]:
                    visited[y, x] = True
                    independent.discard(labels[y, x])
                    current.append((x, y))
                elif current:
                    found.append(current)
                    current = []
            if current:
                found.append(current)
            if len(found) > 1:
                (x0, y0), (x1, y1) = found[0][0], found[-1][-1]
                if max(abs(x0 - x1), abs(y0 - y1)) == 1:
                    found = found[1:-1] + [found[-1] + found[0][::-1]]
            segments += found
        points = sum(len(cv2.approxPolyDP(np.array(s, np.int32).reshape(-1, 1, 2), epsilon, False)) for s in segments)
        return points + len(independent)

    return side(fp_r, tp | fn_r) + side(fn_r, ~(tp | fp_r | fn_r))


def test_dis_hce_rule_matches_direct_reading():
    rng = np.random.default_rng(5)
    differs_from_pysod = 0
    for i in range(8):
        gt = blob_gt(rng, 48, 64) if i % 2 else holed_objects(48, 64)
        pred = soft_prediction(rng, gt, blur=2.0, noise=40.0)
        if i % 3 == 0:
            pred[rng.random(gt.shape) < 0.2] = 128  # level 128: background for DIS, foreground for pysodmetrics
        if i % 4 == 1:
            pred = (60 + pred // 2).astype(np.uint8)  # not spanning 0..255: normalisation matters for pysodmetrics
        ours = dis_image_stats(pred, gt, hce_binarize="dis").hce
        assert ours == direct_dis_hce(gt, pred)
        differs_from_pysod += ours != dis_image_stats(pred, gt, hce_binarize="pysodmetrics").hce
    assert differs_from_pysod > 0  # the cases above do exercise the difference between the two rules


def test_hce_rules_agree_on_full_range_predictions_without_level_128():
    # With a prediction spanning 0..255, normalised > 0.5 is pred_u8 >= 128; without level 128 both rules coincide.
    rng = np.random.default_rng(6)
    gt = holed_objects(60, 80)
    pred = soft_prediction(rng, gt, noise=30.0)
    pred[pred == 128] = 127
    pred[0, 0], pred[0, 1] = 0, 255
    assert (
        dis_image_stats(pred, gt, hce_binarize="dis").hce == dis_image_stats(pred, gt, hce_binarize="pysodmetrics").hce
    )


# ----------------------------------------------------------------------------------------------------------------------
# Inputs


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(20, 30\).*\(20, 31\)"):
        dis_image_stats(np.zeros((20, 30), np.uint8), np.zeros((20, 31), np.uint8))


def test_rejects_non_uint8_colour_and_unknown_rule():
    gray = np.zeros((8, 8), np.uint8)
    with pytest.raises(TypeError, match="uint8"):
        dis_image_stats(gray.astype(np.float32), gray)
    with pytest.raises(ValueError, match="single-channel"):
        dis_image_stats(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="hce_binarize"):
        dis_image_stats(gray, gray, hce_binarize="matlab")
    with pytest.raises(ValueError, match="at least one"):
        summarize_dis([])


def test_resize_to_gt_is_opencv_bilinear():
    pred = np.random.default_rng(7).integers(0, 256, (32, 48), dtype=np.uint8)
    gt = np.zeros((50, 70), np.uint8)
    resized = resize_to_gt(pred, gt)
    assert resized.shape == gt.shape
    np.testing.assert_array_equal(resized, cv2.resize(pred, (70, 50), interpolation=cv2.INTER_LINEAR))
    assert resize_to_gt(pred, pred) is pred
