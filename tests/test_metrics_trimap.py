"""Trimap-segmentation metrics (SegTrimap spec §6.2, §10, §11) against hand-computed cases and plain-Python loop
implementations written from the spec's wording."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxmatte.metrics.trimap import (
    BG,
    CLASS_NAMES,
    COMPAT_KEYS,
    FG,
    TRIMAP_KEYS,
    UNKNOWN,
    RowIoUCompat,
    TrimapMetrics,
    class_iou,
    confusion_matrix,
    image_metrics,
    labels_to_png,
    row_iou,
    trimap_labels,
)

# --- plain references, one pixel / one row at a time ------------------------------------------------------------------


def plain_confusion(gt: np.ndarray, pred: np.ndarray) -> list[list[int]]:
    counts = [[0, 0, 0] for _ in range(3)]
    for gt_row, pred_row in zip(gt.tolist(), pred.tolist(), strict=True):
        for g, p in zip(gt_row, pred_row, strict=True):
            counts[g][p] += 1
    return counts


def divide(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator != 0 else math.nan


def plain_iou(m: list[list[int]], c: int) -> float:
    row = sum(m[c][p] for p in range(3))
    col = sum(m[g][c] for g in range(3))
    return divide(m[c][c], row + col - m[c][c])


def plain_miou(m: list[list[int]]) -> float:
    """Mean IoU over the classes whose union (GT or prediction) is non-empty."""
    values = [plain_iou(m, c) for c in range(3) if not math.isnan(plain_iou(m, c))]
    return sum(values) / len(values) if values else math.nan


def plain_clean_block(m: list[list[int]], miou_per_image: float) -> dict[str, float]:
    """The §11.2 formula table, written entry by entry."""
    total = sum(sum(row) for row in m)
    gt_unknown = sum(m[1][p] for p in range(3))
    pred_unknown = sum(m[g][1] for g in range(3))
    precision = divide(m[1][1], pred_unknown)
    recall = divide(m[1][1], gt_unknown)
    if math.isnan(precision) or math.isnan(recall):
        f1 = math.nan
    else:
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {
        "IoU_bg": plain_iou(m, 0),
        "IoU_unknown": plain_iou(m, 1),
        "IoU_fg": plain_iou(m, 2),
        "mIoU": plain_miou(m),
        "mIoU_per_image": miou_per_image,
        "pixel_acc": divide(m[0][0] + m[1][1] + m[2][2], total),
        "unknown_precision": precision,
        "unknown_recall": recall,
        "unknown_f1": f1,
        "fgbg_swap_rate": divide(m[2][0] + m[0][2], total),
        "unknown_miss_rate": divide(m[1][0] + m[1][2], gt_unknown),
    }


def plain_row_iou(pred: np.ndarray, gt: np.ndarray, cls: int) -> float | None:
    """§10: one IoU per row, rows with an empty union dropped, mean of the rest; None if every row is empty."""
    row_values = []
    for y in range(gt.shape[0]):
        intersection = union = 0
        for x in range(gt.shape[1]):
            in_pred = int(pred[y, x]) == cls
            in_gt = int(gt[y, x]) == cls
            intersection += in_pred and in_gt
            union += in_pred or in_gt
        if union > 0:
            row_values.append(intersection / union)
    return sum(row_values) / len(row_values) if row_values else None


def plain_compat(samples: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """PerClassIoU and MultiClassIoU of §10 over (pred, gt) samples."""
    per_class: list[list[float]] = [[], [], []]
    sample_means: list[float] = []
    for pred, gt in samples:
        values = [plain_row_iou(pred, gt, c) for c in range(3)]
        for c in range(3):
            if values[c] is not None:
                per_class[c].append(values[c])
        if values[0] is not None and values[1] is not None and values[2] is not None:
            sample_means.append((values[0] + values[1] + values[2]) / 3)
    averages = [sum(v) / len(v) if v else math.nan for v in per_class]
    averages.append(sum(sample_means) / len(sample_means) if sample_means else math.nan)
    return dict(zip(COMPAT_KEYS, averages, strict=True))


def assert_same(actual: dict[str, float], expected: dict[str, float]) -> None:
    assert list(actual) == list(expected)
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(actual[key]), key
        else:
            assert actual[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def random_labels(rng: np.random.Generator, shape: tuple[int, int], classes: list[int]) -> np.ndarray:
    """A label map using only ``classes``, with blocky structure so rows differ."""
    coarse = rng.choice(classes, size=(max(shape[0] // 3, 1), max(shape[1] // 3, 1)))
    labels = np.kron(coarse, np.ones((3, 3), dtype=coarse.dtype))[: shape[0], : shape[1]]
    labels = np.pad(labels, ((0, shape[0] - labels.shape[0]), (0, shape[1] - labels.shape[1])), mode="edge")
    noise = rng.random(shape) < 0.2
    labels[noise] = rng.choice(classes, size=int(noise.sum()))
    return labels.astype(np.uint8)


CLASS_SUBSETS = [[0, 1, 2], [0, 1, 2], [0, 1], [1, 2], [0, 2], [0], [1], [2]]


def random_pair(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(pred, gt), each drawn from a random class subset, so classes are often absent from one or both."""
    gt_classes = CLASS_SUBSETS[rng.integers(len(CLASS_SUBSETS))]
    pred_classes = CLASS_SUBSETS[rng.integers(len(CLASS_SUBSETS))]
    gt = random_labels(rng, shape, gt_classes)
    if rng.random() < 0.5:  # a noisy copy of the GT: realistic overlap
        pred = gt.copy()
        flip = rng.random(shape) < 0.3
        pred[flip] = rng.choice(pred_classes, size=int(flip.sum()))
    else:
        pred = random_labels(rng, shape, pred_classes)
    return pred, gt


# --- §6.2 label mapping -----------------------------------------------------------------------------------------------


def test_class_ids():
    assert (BG, UNKNOWN, FG) == (0, 1, 2)
    assert CLASS_NAMES == ("bg", "unknown", "fg")


def test_trimap_labels_boundaries():
    values = np.array([[0, 14, 15, 128], [229, 230, 254, 255]], dtype=np.uint8)
    expected = np.array([[0, 0, 1, 1], [1, 2, 2, 2]], dtype=np.uint8)
    labels = trimap_labels(values)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(trimap_labels(values[:, :, None]), expected)  # HxWx1


def test_trimap_labels_every_value():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    labels = trimap_labels(values)
    for t, label in zip(values.ravel().tolist(), labels.ravel().tolist(), strict=True):
        assert label == (0 if t <= 14 else 1 if t <= 229 else 2), t


def test_labels_to_png_round_trip():
    labels = np.random.default_rng(0).integers(0, 3, size=(7, 9)).astype(np.int64)
    png = labels_to_png(labels)
    assert png.dtype == np.uint8
    assert set(np.unique(png).tolist()) == {0, 128, 255}
    np.testing.assert_array_equal(png[labels == 0], 0)
    np.testing.assert_array_equal(png[labels == 1], 128)
    np.testing.assert_array_equal(png[labels == 2], 255)
    np.testing.assert_array_equal(trimap_labels(png), labels)


@pytest.mark.parametrize(
    ("trimap", "message"),
    [
        (np.zeros((4, 4), dtype=np.float32), "uint8"),
        (np.zeros((4, 4), dtype=np.uint16), "uint8"),
        (np.zeros((4, 4, 3), dtype=np.uint8), "single-channel"),
        (np.zeros(16, dtype=np.uint8), "single-channel"),
    ],
)
def test_trimap_labels_rejects(trimap, message):
    with pytest.raises(ValueError, match=message):
        trimap_labels(trimap)


@pytest.mark.parametrize("labels", [np.array([[0, 3]]), np.array([[-1, 0]]), np.array([[0.0, 1.0]])])
def test_labels_to_png_rejects(labels):
    with pytest.raises(ValueError, match="class ids"):
        labels_to_png(labels)


# --- clean block (§11.2) ----------------------------------------------------------------------------------------------

# gt = [[0, 1, 2],    pred = [[0, 1, 1],
#       [0, 1, 1]]            [2, 1, 0]]
# pixels (g, p): (0,0) (1,1) (2,1) / (0,2) (1,1) (1,0)  =>  M = [[1, 0, 1], [1, 2, 0], [0, 1, 0]],
# row sums (GT) = column sums (pred) = [2, 3, 1], total 6.
# IoU_bg = 1 / (2 + 2 - 1) = 1/3, IoU_unknown = 2 / (3 + 3 - 2) = 1/2, IoU_fg = 0 / (1 + 1 - 0) = 0,
# mIoU = (1/3 + 1/2 + 0) / 3 = 5/18, pixel_acc = 3/6, unknown precision = 2/3, recall = 2/3, f1 = 2/3,
# fgbg_swap_rate = (M[fg,bg] + M[bg,fg]) / 6 = (0 + 1) / 6, unknown_miss_rate = (M[u,bg] + M[u,fg]) / 3 = 1/3.
TINY_GT = np.array([[0, 1, 2], [0, 1, 1]], dtype=np.uint8)
TINY_PRED = np.array([[0, 1, 1], [2, 1, 0]], dtype=np.uint8)
TINY_EXPECTED = {
    "IoU_bg": 1 / 3,
    "IoU_unknown": 1 / 2,
    "IoU_fg": 0.0,
    "mIoU": 5 / 18,
    "mIoU_per_image": 5 / 18,
    "pixel_acc": 1 / 2,
    "unknown_precision": 2 / 3,
    "unknown_recall": 2 / 3,
    "unknown_f1": 2 / 3,
    "fgbg_swap_rate": 1 / 6,
    "unknown_miss_rate": 1 / 3,
}


def test_tiny_example():
    confusion = confusion_matrix(TINY_GT, TINY_PRED)
    assert confusion.dtype == np.int64 and confusion.shape == (3, 3)
    np.testing.assert_array_equal(confusion, [[1, 0, 1], [1, 2, 0], [0, 1, 0]])
    assert_same(image_metrics(TINY_PRED, TINY_GT), TINY_EXPECTED)
    metrics = TrimapMetrics()
    assert_same(metrics.add(TINY_PRED, TINY_GT), TINY_EXPECTED)
    assert_same(metrics.summary(), TINY_EXPECTED)


def test_pooled_versus_per_image_miou():
    # Second image: all BG, predicted all BG: only BG present, its IoU is 1, so its mIoU is 1.
    # Pooled M = [[7, 0, 1], [1, 2, 0], [0, 1, 0]]: IoU_bg = 7 / (8 + 8 - 7) = 7/9, unknown 1/2, fg 0,
    # mIoU = (7/9 + 1/2 + 0) / 3 = 23/54; mIoU_per_image = (5/18 + 1) / 2 = 23/36.
    metrics = TrimapMetrics()
    metrics.add(TINY_PRED, TINY_GT)
    metrics.add(np.zeros((2, 3), dtype=np.uint8), np.zeros((2, 3), dtype=np.uint8))
    summary = metrics.summary()
    np.testing.assert_array_equal(metrics.confusion, [[7, 0, 1], [1, 2, 0], [0, 1, 0]])
    assert metrics.images == 2
    assert summary["IoU_bg"] == pytest.approx(7 / 9)
    assert summary["mIoU"] == pytest.approx(23 / 54)
    assert summary["mIoU_per_image"] == pytest.approx(23 / 36)


@pytest.mark.parametrize("seed", range(5))
def test_clean_block_against_plain_loops(seed):
    rng = np.random.default_rng(seed)
    height, width = [(6, 9), (11, 7), (16, 16), (5, 23), (9, 12)][seed]
    metrics = TrimapMetrics()
    pooled = [[0, 0, 0] for _ in range(3)]
    image_mious = []
    for _ in range(6):
        shape = (int(rng.integers(height // 2 + 1, height + 1)), int(rng.integers(width // 2 + 1, width + 1)))
        pred, gt = random_pair(rng, shape)
        if seed % 2:  # the accumulator takes any integer dtype
            pred, gt = pred.astype(np.int64), gt.astype(np.int32)
        m = plain_confusion(gt, pred)
        np.testing.assert_array_equal(confusion_matrix(gt, pred), m)
        assert_same(metrics.add(pred, gt), plain_clean_block(m, plain_miou(m)))
        assert_same(image_metrics(pred, gt), plain_clean_block(m, plain_miou(m)))
        pooled = [[pooled[g][p] + m[g][p] for p in range(3)] for g in range(3)]
        image_mious.append(plain_miou(m))
    np.testing.assert_array_equal(metrics.confusion, pooled)
    summary = metrics.summary()
    assert tuple(summary) == TRIMAP_KEYS
    assert_same(summary, plain_clean_block(pooled, sum(image_mious) / len(image_mious)))
    assert summary["unknown_miss_rate"] == pytest.approx(1 - summary["unknown_recall"])


def test_miou_per_image_ignores_absent_classes():
    # gt all FG, pred FG with one BG pixel: unknown absent from both, so the image mIoU averages BG (0) and FG (3/4).
    gt = np.full((1, 4), FG, dtype=np.uint8)
    pred = np.array([[FG, FG, FG, BG]], dtype=np.uint8)
    row = image_metrics(pred, gt)
    assert math.isnan(row["IoU_unknown"])
    assert row["IoU_fg"] == pytest.approx(3 / 4) and row["IoU_bg"] == 0.0
    assert row["mIoU"] == pytest.approx(3 / 8) and row["mIoU_per_image"] == pytest.approx(3 / 8)
    assert math.isnan(row["unknown_precision"]) and math.isnan(row["unknown_recall"])
    assert math.isnan(row["unknown_f1"]) and math.isnan(row["unknown_miss_rate"])
    np.testing.assert_array_equal(np.isnan(class_iou(confusion_matrix(gt, pred))), [False, True, False])


def test_fgbg_swap_rate_counts_only_fg_bg():
    gt = np.array([[FG, FG, BG, BG, UNKNOWN, UNKNOWN]], dtype=np.uint8)
    unknown_errors = np.array([[UNKNOWN, FG, UNKNOWN, BG, BG, FG]], dtype=np.uint8)  # no FG<->BG swap
    assert image_metrics(unknown_errors, gt)["fgbg_swap_rate"] == 0.0
    swaps = np.array([[BG, FG, FG, BG, BG, FG]], dtype=np.uint8)  # FG->BG and BG->FG once each, U->known twice
    row = image_metrics(swaps, gt)
    assert row["fgbg_swap_rate"] == pytest.approx(2 / 6)
    assert row["unknown_miss_rate"] == 1.0 and row["unknown_recall"] == 0.0


def test_unknown_f1_nan_and_zero():
    gt = np.array([[UNKNOWN, BG]], dtype=np.uint8)
    no_pred_unknown = image_metrics(np.array([[BG, BG]], dtype=np.uint8), gt)
    assert math.isnan(no_pred_unknown["unknown_precision"]) and math.isnan(no_pred_unknown["unknown_f1"])
    disjoint = image_metrics(np.array([[BG, UNKNOWN]], dtype=np.uint8), gt)
    assert disjoint["unknown_precision"] == 0.0 and disjoint["unknown_recall"] == 0.0
    assert disjoint["unknown_f1"] == 0.0


def test_empty_accumulator_is_nan():
    summary = TrimapMetrics().summary()
    assert tuple(summary) == TRIMAP_KEYS and all(math.isnan(v) for v in summary.values())
    compat = RowIoUCompat().summary()
    assert tuple(compat) == COMPAT_KEYS and all(math.isnan(v) for v in compat.values())


# --- compatibility block (§10 / §11.1) --------------------------------------------------------------------------------

# Same tiny maps, row by row (class: intersection / union):
#   row 0: gt [0 1 2], pred [0 1 1]: bg 1/1, unknown 1/2, fg 0/1;  row 1: gt [0 1 1], pred [2 1 0]: bg 0/2,
#   unknown 1/2, fg 0/1 (pred only)  =>  sample values bg 1/2, unknown 1/2, fg 0, sample mean 1/3.
# A second sample, all BG in both: bg 1, unknown and fg give no value, so it does not enter the mean.
# Summary: bg (1/2 + 1) / 2 = 3/4, unknown 1/2, fg 0, mean 1/3 (first sample only).


def test_row_iou_tiny_example():
    assert row_iou(TINY_PRED, TINY_GT, BG) == pytest.approx(1 / 2)
    assert row_iou(TINY_PRED, TINY_GT, UNKNOWN) == pytest.approx(1 / 2)
    assert row_iou(TINY_PRED, TINY_GT, FG) == 0.0
    background = np.zeros((2, 3), dtype=np.uint8)
    assert row_iou(background, background, BG) == 1.0
    assert row_iou(background, background, UNKNOWN) is None
    compat = RowIoUCompat()
    compat.add(TINY_PRED, TINY_GT)
    compat.add(background, background)
    assert_same(
        compat.summary(),
        {
            "SegTrimap_rowIoU_bg": 3 / 4,
            "SegTrimap_rowIoU_unknown": 1 / 2,
            "SegTrimap_rowIoU_fg": 0.0,
            "SegTrimap_rowIoU_mean": 1 / 3,
        },
    )


def test_row_iou_is_not_pixel_iou():
    # FG: row 0 has 1 of 1 right, row 1 has 1 of 3: row mean (1 + 1/3) / 2 = 2/3, pooled IoU 2/4.
    gt = np.array([[FG, BG, BG], [FG, FG, FG]], dtype=np.uint8)
    pred = np.array([[FG, BG, BG], [FG, BG, BG]], dtype=np.uint8)
    assert row_iou(pred, gt, FG) == pytest.approx(2 / 3)
    assert image_metrics(pred, gt)["IoU_fg"] == pytest.approx(1 / 2)


@pytest.mark.parametrize("seed", range(4))
def test_row_iou_compat_against_plain_loops(seed):
    rng = np.random.default_rng(100 + seed)
    compat = RowIoUCompat()
    samples = []
    for index in range(8):
        pred, gt = random_pair(rng, (32, 40))
        if index % 3 == 0:  # letterbox-like padding: BG bands in both maps
            pred[:5], gt[:5], pred[-4:], gt[-4:] = BG, BG, BG, BG
        for cls in (BG, UNKNOWN, FG):
            expected = plain_row_iou(pred, gt, cls)
            actual = row_iou(pred, gt, cls)
            assert (actual is None) == (expected is None)
            if expected is not None:
                assert actual == pytest.approx(expected, rel=1e-12)
        compat.add(pred, gt)
        samples.append((pred, gt))
    assert_same(compat.summary(), plain_compat(samples))


def test_compat_mean_needs_all_three_classes():
    # Sample 1 has no unknown anywhere: it enters bg and fg, not the mean; sample 2 has all three.
    compat = RowIoUCompat()
    first_gt = np.array([[BG, FG], [BG, FG]], dtype=np.uint8)
    compat.add(first_gt, first_gt)  # bg 1, fg 1, unknown no value
    second_gt = np.array([[BG, UNKNOWN, FG]], dtype=np.uint8)
    second_pred = np.array([[BG, UNKNOWN, UNKNOWN]], dtype=np.uint8)  # bg 1, unknown 1/2, fg 0
    compat.add(second_pred, second_gt)
    summary = compat.summary()
    assert summary["SegTrimap_rowIoU_bg"] == 1.0
    assert summary["SegTrimap_rowIoU_unknown"] == pytest.approx(1 / 2)
    assert summary["SegTrimap_rowIoU_fg"] == pytest.approx(1 / 2)
    assert summary["SegTrimap_rowIoU_mean"] == pytest.approx(1 / 2)  # (1 + 1/2 + 0) / 3, second sample only


# --- bad inputs -------------------------------------------------------------------------------------------------------


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        confusion_matrix(np.zeros((2, 3), dtype=np.uint8), np.zeros((3, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\)"):
        TrimapMetrics().add(np.zeros((3, 2), dtype=np.uint8), np.zeros((2, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        RowIoUCompat().add(np.zeros((4, 4), dtype=np.uint8), np.zeros((4, 5), dtype=np.uint8))


@pytest.mark.parametrize(
    ("pred", "message"),
    [
        (np.full((2, 3), 3, dtype=np.uint8), "class ids"),
        (np.full((2, 3), 255, dtype=np.uint8), "class ids"),  # an unmapped trimap PNG
        (np.zeros((2, 3), dtype=np.float32), "integer"),
        (np.zeros((2, 3), dtype=bool), "integer"),
        (np.zeros((1, 2, 3), dtype=np.uint8), "HxW"),
        (np.zeros((0, 3), dtype=np.uint8), "empty"),
    ],
)
def test_bad_label_maps(pred, message):
    gt = np.zeros(pred.shape, dtype=np.uint8)
    for call in (
        lambda: image_metrics(pred, gt),
        lambda: TrimapMetrics().add(pred, gt),
        lambda: RowIoUCompat().add(pred, gt),
    ):
        with pytest.raises(ValueError, match=message):
            call()


def test_row_iou_rejects_bad_class():
    with pytest.raises(ValueError, match="cls"):
        row_iou(TINY_PRED, TINY_GT, 3)


def test_failed_add_leaves_accumulators_unchanged():
    metrics, compat = TrimapMetrics(), RowIoUCompat()
    metrics.add(TINY_PRED, TINY_GT)
    compat.add(TINY_PRED, TINY_GT)
    before, before_compat = metrics.summary(), compat.summary()
    with pytest.raises(ValueError):
        metrics.add(np.full((2, 3), 7, dtype=np.uint8), TINY_GT)
    with pytest.raises(ValueError):
        compat.add(TINY_PRED, np.zeros((3, 3), dtype=np.uint8))
    assert metrics.images == 1
    assert_same(metrics.summary(), before)
    assert_same(compat.summary(), before_compat)
