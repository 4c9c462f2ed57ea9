"""DIS / salient-object metrics: max/mean/adaptive F-measure, weighted F, S-measure, E-measure, MAE and HCE.

The definitions are those of pysodmetrics 1.6.2 (the reference every number here agrees with to 1e-6, HCE exactly),
plus the DIS binarisation rule for HCE:

- gt -> gt_u8 > 128; pred -> pred_u8 / 255, then per-image min-max normalisation (skipped for a constant prediction).
- Threshold curves have 256 entries, index i <-> threshold t = 255 - i, on q = floor(255 * normalised pred).
- maxFm / meanFm / maxEm / meanEm reduce the dataset-mean curve (mean over images per threshold first), so they are
  not the means of per-image maxima; every other key is a mean over images of a per-image value.
- HCE (relax 5, epsilon 2.0, skeleton of the GT) binarises the prediction with `hce_binarize`:
  "dis" (default): pred_u8 > 128 without normalisation, as `xuebinqin/DIS` and BiRefNet (the published numbers);
  "pysodmetrics": normalised pred > 0.5, as pysodmetrics.

Speed: a uint8 prediction has at most 256 levels, so the normalisation and the quantisation are 256-entry look-up
tables, and one `np.bincount` per image (value x GT x S-measure quadrant) feeds the F/E curves, the adaptive values,
MAE and the S-measure. The weighted F-measure runs its distance transform on the GT's bounding box, HCE on the
bounding box of GT | prediction (both with margins that keep the results identical to the full-image ones), and thins
only the GT components that meet FN. scikit-image's `skeletonize` (used for exact agreement, as the references) still
dominates on large solid objects: it rescans the box once per peeled layer.

`dis_image_stats` is pure and its result picklable; `evaluate_dis_pairs` fans images out over processes.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import cv2
import numpy as np
from scipy.ndimage import distance_transform_edt
from skimage.morphology import skeletonize

__all__ = [
    "DIS_KEYS",
    "HCE_BINARIZE_RULES",
    "DISImageStats",
    "dis_image_row",
    "dis_image_stats",
    "evaluate_dis_pairs",
    "resize_to_gt",
    "summarize_dis",
]

DIS_KEYS = ("maxFm", "wFmeasure", "MAE", "Smeasure", "meanEm", "HCE", "maxEm", "meanFm", "adpEm", "adpFm")
HCE_BINARIZE_RULES = ("dis", "pysodmetrics")

EPS = float(np.spacing(1))  # MATLAB eps, as the reference
N_LEVELS = 256
F_BETA2 = 0.3  # the F-measure's beta^2
WFM_BETA = 1.0  # weighted F-measure (used linearly, as the reference)
S_ALPHA = 0.5
GT_THRESHOLD = 128  # gt > 128 is foreground (and pred_u8 > 128 for the "dis" HCE rule)
HCE_RELAX = 5
HCE_EPSILON = 2.0
WFM_GAUSS_SIZE = 7
WFM_GAUSS_SIGMA = 5.0

_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=np.uint8)  # disk(1)


def _matlab_gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """1-D factor of MATLAB `fspecial('gaussian', size, sigma)`: the 2-D kernel is its outer product."""
    half = (size - 1) / 2
    x = np.arange(-half, half + 1)
    kernel_2d = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma * sigma))
    if np.any(kernel_2d < np.finfo(np.float64).eps * kernel_2d.max()):
        raise ValueError("fspecial would zero some entries: the kernel is no longer separable")
    g = np.exp(-(x**2) / (2 * sigma * sigma))
    return g / g.sum()


_WFM_KERNEL_1D = _matlab_gaussian_1d(WFM_GAUSS_SIZE, WFM_GAUSS_SIGMA)


@dataclass(frozen=True, eq=False)
class DISImageStats:
    """Per-image partial results; `summarize_dis` reduces a sequence of them to the dataset numbers.

    Curves have 256 entries, index i <-> threshold 255 - i (pysodmetrics order).
    """

    shape: tuple[int, int]
    fm_curve: np.ndarray
    em_curve: np.ndarray
    precision_curve: np.ndarray
    recall_curve: np.ndarray
    adp_fm: float
    adp_em: float
    wfm: float
    sm: float
    mae: float
    hce: int


# ----------------------------------------------------------------------------------------------------------------------
# Inputs


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    for name, array in (("prediction", pred), ("ground truth", gt)):
        if array.ndim != 2:
            raise ValueError(f"{name} must be a single-channel HxW image, got shape {array.shape}")
        if array.dtype != np.uint8:
            raise TypeError(f"{name} must be uint8 (0..255), got {array.dtype}")
        if array.size == 0:
            raise ValueError(f"{name} is empty: shape {array.shape}")


def _check_rule(hce_binarize: str) -> None:
    if hce_binarize not in HCE_BINARIZE_RULES:
        raise ValueError(f"hce_binarize must be one of {HCE_BINARIZE_RULES}, got {hce_binarize!r}")


def _normalised_levels(present: np.ndarray) -> np.ndarray:
    """Normalised value of each uint8 level, with the reference's float operations (so q = floor(255 p) agrees)."""
    levels = np.arange(N_LEVELS) / 255
    used = np.flatnonzero(present)
    low, high = levels[used[0]], levels[used[-1]]
    if high != low:
        levels = (levels - low) / (high - low)
    return levels


def resize_to_gt(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The prediction at the GT's size: OpenCV bilinear (half-pixel centres, no antialias), as BiRefNet evaluates."""
    if pred.shape[:2] == gt.shape[:2]:
        return pred
    return cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)


# ----------------------------------------------------------------------------------------------------------------------
# F- and E-measure from counts


def _f_measure_curve(tp: np.ndarray, pred_pos: np.ndarray, n_fg: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F (beta^2 = 0.3) per threshold; zero denominators give 0."""
    precision = tp / np.where(pred_pos == 0, 1, pred_pos)
    recall = tp / max(n_fg, 1)
    numerator = (1 + F_BETA2) * precision * recall
    denominator = np.where(numerator == 0, 1, F_BETA2 * precision + recall)
    return precision, recall, numerator / denominator


def _e_measure(tp, pred_pos, n_fg: int, n_pixels: int):
    """Enhanced-alignment measure of binarised predictions from their counts (arrays or scalars)."""
    if n_fg == 0:
        total = n_pixels - pred_pos
    elif n_fg == n_pixels:
        total = pred_pos
    else:
        pred_neg = n_pixels - pred_pos
        missed = n_fg - tp
        counts = (tp, pred_pos - tp, missed, pred_neg - missed)
        mean_pred = pred_pos / n_pixels
        mean_gt = n_fg / n_pixels
        pred_values = (1 - mean_pred, 1 - mean_pred, 0 - mean_pred, 0 - mean_pred)
        gt_values = (1 - mean_gt, 0 - mean_gt, 1 - mean_gt, 0 - mean_gt)
        total = 0
        for count, a, b in zip(counts, pred_values, gt_values, strict=True):
            align = 2 * (a * b) / (a**2 + b**2 + EPS)
            total = total + (align + 1) ** 2 / 4 * count
    return total / (n_pixels - 1 + EPS)


# ----------------------------------------------------------------------------------------------------------------------
# S-measure


def _object_score(values: np.ndarray, weights: np.ndarray) -> float:
    """2 mean / (mean^2 + 1 + std + EPS) of a multiset given as levels and their counts (std with ddof 1)."""
    n = int(weights.sum())
    mean = float(weights @ values) / n
    std = math.sqrt(float(weights @ (values - mean) ** 2) / (n - 1)) if n > 1 else 0.0
    return 2 * mean / (mean**2 + 1 + std + EPS)


def _quadrant_ssim(levels: np.ndarray, bg_counts: np.ndarray, fg_counts: np.ndarray, pred_view: np.ndarray) -> float:
    """SSIM of one S-measure quadrant from its level histograms (GT background / foreground).

    Where the reference's result hinges on an exact zero (constant GT and constant prediction in the quadrant), the
    reference's own mean of `pred_view` decides, so the value agrees bit for bit there.
    """
    counts = bg_counts + fg_counts
    n = int(counts.sum())
    if n == 0:
        return math.nan
    n_fg = int(fg_counts.sum())
    used = np.flatnonzero(counts)
    if n_fg in (0, n):
        # sigma_xy = 0 exactly, so alpha = 0: 1 if beta = 0 (constant prediction whose mean is exact), else 0.
        if used.size > 1:
            return 0.0
        return 1.0 if np.mean(pred_view) == levels[used[0]] else 0.0
    if used.size == 1:
        return 0.0  # constant prediction: sigma_x = sigma_xy = 0 while sigma_y > 0
    x = float(counts @ levels) / n
    y = n_fg / n
    dx = levels - x
    denominator = n - 1 + EPS
    sigma_x = float(counts @ dx**2) / denominator
    sigma_y = (n_fg * (1 - y) ** 2 + (n - n_fg) * y**2) / denominator
    sigma_xy = (float(fg_counts @ dx) * (1 - y) - float(bg_counts @ dx) * y) / denominator
    alpha = 4 * x * y * sigma_xy
    beta = (x**2 + y**2) * (sigma_x + sigma_y)
    return alpha / (beta + EPS)  # beta > 0 here (sigma_y > 0), so alpha = 0 gives the reference's 0


def _s_measure(
    levels: np.ndarray,
    quadrant_hist: np.ndarray,
    p_img: np.ndarray,
    mean_pred: float,
    n_fg: int,
    split: tuple[int, int],
) -> float:
    height, width = p_img.shape
    area = height * width
    y = n_fg / area
    if y == 0:
        return 1 - mean_pred
    if y == 1:
        return mean_pred
    hist = quadrant_hist.sum(axis=0)
    object_score = y * _object_score(levels, hist[1]) + (1 - y) * _object_score(1 - levels, hist[0])
    cy, cx = split
    if cy == height or cx == width:
        warnings.warn(
            "S-measure: the GT centroid rounds to the last row/column, a quadrant is empty and the score is NaN "
            "(as pysodmetrics)",
            RuntimeWarning,
            stacklevel=3,
        )
    w_lt = cx * cy / area
    w_rt = cy * (width - cx) / area
    w_lb = (height - cy) * cx / area
    w_rb = 1 - w_lt - w_rt - w_lb
    views = (
        p_img[0:cy, 0:cx],
        p_img[0:cy, cx:width],
        p_img[cy:height, 0:cx],
        p_img[cy:height, cx:width],
    )
    region_score = 0.0
    for quadrant, (weight, view) in enumerate(zip((w_lt, w_rt, w_lb, w_rb), views, strict=True)):
        region_score += _quadrant_ssim(levels, quadrant_hist[quadrant, 0], quadrant_hist[quadrant, 1], view) * weight
    score = object_score * S_ALPHA + region_score * (1 - S_ALPHA)
    return score if math.isnan(score) else max(0.0, score)


def _centroid_split(gt: np.ndarray, n_fg: int) -> tuple[int, int]:
    """MATLAB-style (1-based) rounded centroid of the foreground: the S-measure quadrant split (rows, cols)."""
    height, width = gt.shape
    row_counts = np.count_nonzero(gt, axis=1)
    col_counts = np.count_nonzero(gt, axis=0)
    mean_row = float(np.arange(height) @ row_counts) / n_fg
    mean_col = float(np.arange(width) @ col_counts) / n_fg
    return int(np.round(mean_row)) + 1, int(np.round(mean_col)) + 1


# ----------------------------------------------------------------------------------------------------------------------
# Weighted F-measure


def _bounding_slices(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    return (
        slice(max(rows[0] - margin, 0), min(rows[-1] + margin + 1, height)),
        slice(max(cols[0] - margin, 0), min(cols[-1] + margin + 1, width)),
    )


def _distance_weight(distance: np.ndarray) -> np.ndarray:
    """Margolin's importance weight of background pixels, 2 - exp(ln(0.5) / 5 * distance)."""
    return 2 - np.exp(np.log(0.5) / 5 * distance)


def _weighted_f_measure(p_img: np.ndarray, gt: np.ndarray, n_fg: int) -> float:
    if n_fg == 0:
        return 0.0
    # Et and its Gaussian filter are only used on the foreground: a margin of the kernel radius (+1) around the GT's
    # bounding box gives the same nearest-foreground indices (all foreground pixels are inside) and filter values.
    rows, cols = _bounding_slices(gt, WFM_GAUSS_SIZE // 2 + 1)
    gt_crop = np.ascontiguousarray(gt[rows, cols])
    p_crop = p_img[rows, cols]
    error = np.abs(p_crop - gt_crop)
    distance, (near_row, near_col) = distance_transform_edt(~gt_crop, return_indices=True)
    error_t = np.take(error, near_row * error.shape[1] + near_col)
    error_a = cv2.sepFilter2D(
        error_t, cv2.CV_64F, _WFM_KERNEL_1D, _WFM_KERNEL_1D, delta=0.0, borderType=cv2.BORDER_CONSTANT
    )
    error_fg = error[gt_crop]
    weighted_fg = np.minimum(error_a[gt_crop], error_fg)  # MIN_E_EA on the foreground (B = 1 there)
    sum_fg = float(weighted_fg.sum())
    background = ~gt_crop
    fp_weighted = float(np.sum(error[background] * _distance_weight(distance[background])))
    if (rows.stop - rows.start, cols.stop - cols.start) != gt.shape:
        outside = p_img.copy()
        outside[rows, cols] = 0
        if outside.any():
            # OpenCV's exact transform in float32; squared distances are integers, so rounding them restores the
            # float64 distance (exactly up to ~1000 pixels, where the weight is 2 to double precision anyway).
            far = cv2.distanceTransform((~gt).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE).astype(np.float64)
            far = np.sqrt(np.rint(far * far))
            fp_weighted += float(np.sum(outside * _distance_weight(far)))
    tp_weighted = n_fg - sum_fg
    recall = 1 - sum_fg / n_fg
    precision = tp_weighted / (tp_weighted + fp_weighted + EPS)
    return (1 + WFM_BETA) * recall * precision / (recall + WFM_BETA * precision + EPS)


# ----------------------------------------------------------------------------------------------------------------------
# HCE


def _boundary_effort(mask: np.ndarray, condition: np.ndarray) -> tuple[int, int]:
    """Control points of the kept boundary segments of `mask` and the count of its untouched regions (§1.9 step 5-7).

    Walking the contours with a shared visited map keeps exactly the first occurrence of each point whose (dilated)
    condition is set, so the walk reduces to a first-occurrence test; runs of kept points are the segments.
    """
    mask_u8 = mask.view(np.uint8)
    n_labels, labels = cv2.connectedComponents(mask_u8, connectivity=8)
    n_regions = n_labels - 1
    contours, _ = cv2.findContours(mask_u8, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return 0, n_regions
    points = np.concatenate(contours).reshape(-1, 2)  # (x, y)
    xs, ys = points[:, 0], points[:, 1]
    flat = ys.astype(np.intp) * mask.shape[1] + xs
    first_seen = np.zeros(len(points), dtype=bool)
    first_seen[np.unique(flat, return_index=True)[1]] = True
    dilated = cv2.dilate(condition.view(np.uint8), _CROSS)
    kept = first_seen & (dilated.ravel()[flat] != 0)
    touched = np.unique(labels.ravel()[flat[kept]]).size
    independent = n_regions - touched
    if not kept.any():
        return 0, independent

    contour_id = np.repeat(np.arange(len(contours)), [len(c) for c in contours])
    same_as_prev = np.r_[False, contour_id[1:] == contour_id[:-1]]
    same_as_next = np.r_[contour_id[1:] == contour_id[:-1], False]
    starts = np.flatnonzero(kept & ~(np.r_[False, kept[:-1]] & same_as_prev))
    ends = np.flatnonzero(kept & ~(np.r_[kept[1:], False] & same_as_next)) + 1
    lengths = ends - starts

    # A contour with several segments whose first point (first segment) and last point (last segment) are
    # 8-neighbours: the reversed first segment is appended to the last one.
    _, first_run, runs_per_contour = np.unique(contour_id[starts], return_index=True, return_counts=True)
    several = runs_per_contour > 1
    first_of, last_of = first_run[several], first_run[several] + runs_per_contour[several] - 1
    gap = np.abs(points[starts[first_of]] - points[ends[last_of] - 1]).max(axis=1)
    merged_first, merged_last = first_of[gap == 1], last_of[gap == 1]
    plain = np.ones(len(starts), dtype=bool)
    plain[merged_first] = False
    plain[merged_last] = False

    n_points = int(lengths[plain & (lengths <= 2)].sum())  # approxPolyDP keeps 1- and 2-point segments as they are
    for run in np.flatnonzero(plain & (lengths > 2)):
        n_points += len(cv2.approxPolyDP(points[starts[run] : ends[run]], HCE_EPSILON, False))
    for first, last in zip(merged_first, merged_last, strict=True):
        segment = np.concatenate((points[starts[last] : ends[last]], points[starts[first] : ends[first]][::-1]))
        n_points += len(cv2.approxPolyDP(segment, HCE_EPSILON, False))
    return n_points, independent


def _gt_skeleton_on(gt: np.ndarray, region: np.ndarray) -> np.ndarray:
    """skimage `skeletonize(gt)` wherever it can meet `region` (HCE only uses the skeleton inside FN).

    Zhang-Suen thinning decides each pixel from its 8-neighbours, so 8-connected components thin independently: only
    the components that meet `region` are thinned, inside their bounding box (skimage pads with zeros anyway).
    """
    skeleton = np.zeros_like(gt)
    if not region.any():
        return skeleton
    n_labels, labels = cv2.connectedComponents(gt.view(np.uint8), connectivity=8)
    touched = np.unique(labels[region])
    if touched.size < n_labels - 1:
        selected = np.zeros(n_labels, dtype=bool)
        selected[touched] = True
        components = selected[labels]
    else:
        components = gt
    rows, cols = _bounding_slices(components, 1)
    skeleton[rows, cols] = skeletonize(np.ascontiguousarray(components[rows, cols]))
    return skeleton


def _hce(gt: np.ndarray, pred: np.ndarray) -> int:
    """Human correction effort of boolean GT and boolean prediction (relax 5, epsilon 2.0, skeleton of the GT)."""
    union = gt | pred
    if not union.any():
        return 0
    # All masks live in the bounding box of GT | pred; the relaxation dilates at most HCE_RELAX pixels out of it.
    rows, cols = _bounding_slices(union, HCE_RELAX + 2)
    gt = np.ascontiguousarray(gt[rows, cols])
    pred = np.ascontiguousarray(pred[rows, cols])
    union = gt | pred
    tp = gt & pred
    fp = pred & ~gt
    fn = gt & ~pred
    skeleton = _gt_skeleton_on(gt, fn)
    eroded_union = cv2.erode(union.view(np.uint8), _CROSS, iterations=HCE_RELAX).view(bool)

    not_gt = ~gt
    fp_relaxed = fp & eroded_union
    for _ in range(HCE_RELAX):
        fp_relaxed = cv2.dilate(fp_relaxed.view(np.uint8), _CROSS).view(bool) & not_gt
    fp_relaxed &= fp

    not_pred = ~pred
    fn_relaxed = fn & eroded_union
    for _ in range(HCE_RELAX):
        fn_relaxed = cv2.dilate(fn_relaxed.view(np.uint8), _CROSS).view(bool) & not_pred
    fn_relaxed &= fn
    fn_relaxed |= skeleton & ~tp

    fp_points, fp_independent = _boundary_effort(fp_relaxed, tp | fn_relaxed)
    fn_points, fn_independent = _boundary_effort(fn_relaxed, ~(tp | fp_relaxed | fn_relaxed))
    return fp_points + fp_independent + fn_points + fn_independent


# ----------------------------------------------------------------------------------------------------------------------
# Public API


def dis_image_stats(pred: np.ndarray, gt: np.ndarray, *, hce_binarize: str = "dis") -> DISImageStats:
    """Every DIS metric's per-image part for one HxW uint8 prediction and its HxW uint8 GT (same size)."""
    pred = np.asarray(pred)
    gt_u8 = np.asarray(gt)
    _check_pair(pred, gt_u8)
    _check_rule(hce_binarize)
    height, width = gt_u8.shape
    n_pixels = height * width

    gt = gt_u8 > GT_THRESHOLD
    n_fg = int(np.count_nonzero(gt))

    # One histogram of (level, GT, S-measure quadrant): quadrant 0..3 = LT, RT, LB, RB.
    split = _centroid_split(gt, n_fg) if 0 < n_fg < n_pixels else (height, width)
    code = pred.astype(np.intp)
    np.add(code, N_LEVELS, out=code, where=gt)
    code[split[0] :, :] += 4 * N_LEVELS
    code[:, split[1] :] += 2 * N_LEVELS
    quadrant_hist = np.bincount(code.ravel(), minlength=8 * N_LEVELS).reshape(4, 2, N_LEVELS)
    bg_hist, fg_hist = quadrant_hist.sum(axis=0)
    all_hist = bg_hist + fg_hist

    levels = _normalised_levels(all_hist > 0)
    p_img = np.take(levels, pred)
    mean_pred = float(p_img.mean())

    # Curves: counts of q >= t for t = 255 .. 0.
    quantised = (levels * 255).astype(np.uint8)
    fg_q = np.bincount(quantised, weights=fg_hist, minlength=N_LEVELS).astype(np.int64)
    bg_q = np.bincount(quantised, weights=bg_hist, minlength=N_LEVELS).astype(np.int64)
    tp_curve = np.cumsum(fg_q[::-1])
    pred_pos_curve = tp_curve + np.cumsum(bg_q[::-1])
    precision, recall, fm_curve = _f_measure_curve(tp_curve, pred_pos_curve, n_fg)
    em_curve = _e_measure(tp_curve, pred_pos_curve, n_fg, n_pixels)

    # Adaptive threshold on the float prediction.
    above = levels >= min(2 * mean_pred, 1)
    tp_adp = int(fg_hist[above].sum())
    pred_pos_adp = int(all_hist[above].sum())
    if tp_adp == 0:
        adp_fm = 0.0
    else:
        pre, rec = tp_adp / pred_pos_adp, tp_adp / n_fg
        adp_fm = (1 + F_BETA2) * pre * rec / (F_BETA2 * pre + rec)
    adp_em = float(_e_measure(tp_adp, pred_pos_adp, n_fg, n_pixels))

    mae = float(bg_hist @ levels + fg_hist @ (1 - levels)) / n_pixels
    sm = float(_s_measure(levels, quadrant_hist, p_img, mean_pred, n_fg, split))
    wfm = float(_weighted_f_measure(p_img, gt, n_fg))

    pred_binary = pred > GT_THRESHOLD if hce_binarize == "dis" else np.take(levels > 0.5, pred)
    hce = _hce(gt, pred_binary)

    return DISImageStats(
        shape=(height, width),
        fm_curve=fm_curve,
        em_curve=np.asarray(em_curve, dtype=np.float64),
        precision_curve=precision,
        recall_curve=recall,
        adp_fm=float(adp_fm),
        adp_em=adp_em,
        wfm=wfm,
        sm=sm,
        mae=mae,
        hce=int(hce),
    )


def summarize_dis(stats: Sequence[DISImageStats]) -> dict[str, float]:
    """Dataset numbers (keys DIS_KEYS): curve keys reduce the mean curve, the others are means over images."""
    if len(stats) == 0:
        raise ValueError("summarize_dis needs at least one image")
    fm_curve = np.mean(np.array([s.fm_curve for s in stats], dtype=np.float64), axis=0)
    em_curve = np.mean(np.array([s.em_curve for s in stats], dtype=np.float64), axis=0)

    def mean_of(values: Iterable[float]) -> float:
        return float(np.mean(np.array(list(values), dtype=np.float64)))

    values = {
        "maxFm": float(fm_curve.max()),
        "wFmeasure": mean_of(s.wfm for s in stats),
        "MAE": mean_of(s.mae for s in stats),
        "Smeasure": mean_of(s.sm for s in stats),
        "meanEm": float(em_curve.mean()),
        "HCE": mean_of(s.hce for s in stats),
        "maxEm": float(em_curve.max()),
        "meanFm": float(fm_curve.mean()),
        "adpEm": mean_of(s.adp_em for s in stats),
        "adpFm": mean_of(s.adp_fm for s in stats),
    }
    return {key: values[key] for key in DIS_KEYS}


def dis_image_row(stats: DISImageStats) -> dict[str, float]:
    """Per-image numbers for a CSV row (maxFm and meanEm of this image's own curves)."""
    return {
        "MAE": stats.mae,
        "wFmeasure": stats.wfm,
        "Smeasure": stats.sm,
        "HCE": float(stats.hce),
        "maxFm": float(stats.fm_curve.max()),
        "meanEm": float(stats.em_curve.mean()),
    }


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one image per process: no nested thread pools


def evaluate_dis_pairs(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]], *, workers: int | None = None, hce_binarize: str = "dis"
) -> list[DISImageStats]:
    """`dis_image_stats` of every (pred_u8, gt_u8) pair, in order, over a pool of `workers` processes.

    workers defaults to os.cpu_count(); 1 runs in this process. Pairs are consumed lazily with at most 2 * workers
    images in flight, so a generator that reads files keeps memory bounded. Workers are spawned (not forked) so a
    parent that already runs JAX or OpenCV threads is safe; each worker pays one import of jaxmatte, and a script
    calling this must do so under `if __name__ == "__main__":`.
    """
    _check_rule(hce_binarize)
    n_workers = (os.cpu_count() or 1) if workers is None else workers
    if n_workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if n_workers == 1:
        return [dis_image_stats(pred, gt, hce_binarize=hce_binarize) for pred, gt in pairs]
    results: list[DISImageStats] = []
    pending: deque[Future[DISImageStats]] = deque()
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
        for pred, gt in pairs:
            pending.append(pool.submit(dis_image_stats, pred, gt, hce_binarize=hce_binarize))
            if len(pending) >= 2 * n_workers:
                results.append(pending.popleft().result())
        results.extend(future.result() for future in pending)
    return results
