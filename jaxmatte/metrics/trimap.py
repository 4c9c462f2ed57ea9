"""Trimap-segmentation metrics (SegTrimap spec §6.2, §10, §11). Pure NumPy.

Class ids: 0 = BG, 1 = Unknown, 2 = FG; trimap PNG values map as 0..14 -> BG, 15..229 -> Unknown, 230..255 -> FG.

- Clean block (``TRIMAP_KEYS``, §11.2): from one 3x3 confusion matrix M[g, p] (rows GT, columns prediction) pooled
  over every pixel of the dataset at the original resolution; only ``mIoU_per_image`` is a mean over images (of each
  image's mIoU). ``mIoU`` averages the IoUs of the classes whose union is non-empty (on any real dataset: all three).
  A ratio with a zero denominator is NaN; ``unknown_f1`` is NaN when precision or recall is NaN and 0 when both are 0.
- Compatibility block (``COMPAT_KEYS``, §10 / §11.1): the original evaluator's row-IoU on the 448x448 letterboxed
  canvas, padding included. Per sample and class: the IoU of every image row, rows with an empty union dropped, mean of
  the rest (no value when every row is empty); per class: mean over the samples with a value; mean: per sample the
  mean of the three class values when all three exist, averaged over those samples. Computed in float64 (the original
  uses float32; the difference is far below the 4 printed decimals).

Empty accumulators give NaN everywhere.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "BG",
    "CLASS_NAMES",
    "COMPAT_KEYS",
    "FG",
    "NUM_CLASSES",
    "TRIMAP_KEYS",
    "UNKNOWN",
    "RowIoUCompat",
    "TrimapMetrics",
    "class_iou",
    "confusion_matrix",
    "image_metrics",
    "labels_to_png",
    "row_iou",
    "trimap_labels",
]

BG, UNKNOWN, FG = 0, 1, 2
NUM_CLASSES = 3
CLASS_NAMES = ("bg", "unknown", "fg")

TRIMAP_KEYS = (
    "IoU_bg",
    "IoU_unknown",
    "IoU_fg",
    "mIoU",
    "mIoU_per_image",
    "pixel_acc",
    "unknown_precision",
    "unknown_recall",
    "unknown_f1",
    "fgbg_swap_rate",
    "unknown_miss_rate",
)
COMPAT_KEYS = (
    "SegTrimap_rowIoU_bg",
    "SegTrimap_rowIoU_unknown",
    "SegTrimap_rowIoU_fg",
    "SegTrimap_rowIoU_mean",
)

# §6.2: t <= 14 -> BG, 15 <= t <= 229 -> Unknown, t >= 230 -> FG
UNKNOWN_MIN, FG_MIN = 15, 230
_LABEL_TABLE = np.zeros(256, dtype=np.uint8)
_LABEL_TABLE[UNKNOWN_MIN:FG_MIN] = UNKNOWN
_LABEL_TABLE[FG_MIN:] = FG
_PNG_VALUES = np.array([0, 128, 255], dtype=np.uint8)


def trimap_labels(trimap: np.ndarray) -> np.ndarray:
    """Class ids (uint8 HxW) of an 8-bit trimap PNG (uint8 HxW or HxWx1), mapped as §6.2."""
    trimap = np.asarray(trimap)
    if trimap.dtype != np.uint8:
        raise ValueError(f"trimap must be an 8-bit (uint8) image, got dtype {trimap.dtype}")
    if trimap.ndim == 3 and trimap.shape[2] == 1:
        trimap = trimap[:, :, 0]
    if trimap.ndim != 2:
        raise ValueError(f"trimap must be single-channel HxW or HxWx1 (read the PNG as grayscale), got {trimap.shape}")
    return _LABEL_TABLE[trimap]


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """``labels`` as an integer array whose values all lie in {0, 1, 2}."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids 0 (bg), 1 (unknown), 2 (fg), got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(
            f"{name} must hold class ids 0 (bg), 1 (unknown), 2 (fg), got values in [{labels.min()}, {labels.max()}]"
        )
    return labels


def _check_image_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two non-empty HxW label maps of the same shape."""
    pred = _check_labels(pred, "pred")
    gt = _check_labels(gt, "gt")
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must be HxW label maps of the same shape")
    if pred.size == 0:
        raise ValueError(f"pred and gt are empty (shape {pred.shape})")
    return pred, gt


def labels_to_png(labels: np.ndarray) -> np.ndarray:
    """Class ids -> 8-bit trimap values: BG 0, Unknown 128, FG 255 (uint8, same shape)."""
    return _PNG_VALUES[_check_labels(labels, "labels")]


def confusion_matrix(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """int64 (3, 3) pixel counts M[g, p]: GT class g (rows) predicted as class p (columns)."""
    gt = _check_labels(gt, "gt")
    pred = _check_labels(pred, "pred")
    if gt.shape != pred.shape:
        raise ValueError(f"gt shape {gt.shape} and pred shape {pred.shape} must match")
    pair_index = gt.astype(np.intp).ravel() * NUM_CLASSES + pred.ravel()
    counts = np.bincount(pair_index, minlength=NUM_CLASSES * NUM_CLASSES)
    return counts.astype(np.int64).reshape(NUM_CLASSES, NUM_CLASSES)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else math.nan


def class_iou(confusion: np.ndarray) -> np.ndarray:
    """Per-class IoU (float64, length 3) of a confusion matrix; NaN for a class absent from GT and prediction."""
    confusion = np.asarray(confusion, dtype=np.int64)
    hits = np.diag(confusion)
    union = confusion.sum(axis=1) + confusion.sum(axis=0) - hits
    return np.array([_ratio(hits[c], union[c]) for c in range(NUM_CLASSES)], dtype=np.float64)


def _mean_present(ious: np.ndarray) -> float:
    """Mean over the classes with a value (non-empty union); NaN when there are none."""
    present = ious[~np.isnan(ious)]
    return float(present.mean()) if present.size else math.nan


def _confusion_metrics(confusion: np.ndarray, miou_per_image: float) -> dict[str, float]:
    """Every clean metric of ``confusion``; ``mIoU_per_image`` is supplied by the caller."""
    ious = class_iou(confusion)
    total = confusion.sum()
    gt_unknown = confusion[UNKNOWN, :].sum()
    pred_unknown = confusion[:, UNKNOWN].sum()
    unknown_hits = confusion[UNKNOWN, UNKNOWN]
    precision = _ratio(unknown_hits, pred_unknown)
    recall = _ratio(unknown_hits, gt_unknown)
    if math.isnan(precision) or math.isnan(recall):
        f1 = math.nan
    elif precision + recall == 0.0:
        f1 = 0.0
    else:
        f1 = 2.0 * precision * recall / (precision + recall)
    return {
        "IoU_bg": float(ious[BG]),
        "IoU_unknown": float(ious[UNKNOWN]),
        "IoU_fg": float(ious[FG]),
        "mIoU": _mean_present(ious),
        "mIoU_per_image": miou_per_image,
        "pixel_acc": _ratio(np.trace(confusion), total),
        "unknown_precision": precision,
        "unknown_recall": recall,
        "unknown_f1": f1,
        "fgbg_swap_rate": _ratio(confusion[FG, BG] + confusion[BG, FG], total),
        "unknown_miss_rate": _ratio(confusion[UNKNOWN, BG] + confusion[UNKNOWN, FG], gt_unknown),
    }


def image_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """The clean metrics (``TRIMAP_KEYS``) of one image from its own confusion matrix (a per-image CSV row);
    ``mIoU_per_image`` equals ``mIoU`` here."""
    pred, gt = _check_image_pair(pred, gt)
    confusion = confusion_matrix(gt, pred)
    return _confusion_metrics(confusion, _mean_present(class_iou(confusion)))


class TrimapMetrics:
    """Dataset accumulator of the clean block: pooled confusion matrix plus the per-image mIoU sum."""

    def __init__(self) -> None:
        self._confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
        self._miou_sum = 0.0
        self._images = 0

    def add(self, pred_labels: np.ndarray, gt_labels: np.ndarray) -> dict[str, float]:
        """Add one image (HxW class ids at the original resolution); returns that image's ``image_metrics``."""
        pred_labels, gt_labels = _check_image_pair(pred_labels, gt_labels)
        confusion = confusion_matrix(gt_labels, pred_labels)
        image_miou = _mean_present(class_iou(confusion))  # never NaN: a non-empty image has a present class
        self._confusion += confusion
        self._miou_sum += image_miou
        self._images += 1
        return _confusion_metrics(confusion, image_miou)

    @property
    def confusion(self) -> np.ndarray:
        """The pooled confusion matrix M[g, p] (a copy)."""
        return self._confusion.copy()

    @property
    def images(self) -> int:
        """Number of images added."""
        return self._images

    def summary(self) -> dict[str, float]:
        """``TRIMAP_KEYS`` over everything added (NaN when nothing was added)."""
        return _confusion_metrics(self._confusion, _ratio(self._miou_sum, self._images))


def _row_iou_values(pred: np.ndarray, gt: np.ndarray, cls: int) -> np.ndarray:
    """IoU of class ``cls`` in every row whose union is non-empty."""
    pred_mask = pred == cls
    gt_mask = gt == cls
    intersection = np.count_nonzero(pred_mask & gt_mask, axis=1)
    union = np.count_nonzero(pred_mask | gt_mask, axis=1)
    kept = union > 0
    return intersection[kept] / union[kept]


def row_iou(pred: np.ndarray, gt: np.ndarray, cls: int) -> float | None:
    """The original's per-sample IoU of class ``cls`` (§10): mean of the per-row IoUs over the rows with a non-empty
    union; None when no row has one (the class is absent from both maps)."""
    if cls not in (BG, UNKNOWN, FG):
        raise ValueError(f"cls must be 0 (bg), 1 (unknown) or 2 (fg), got {cls!r}")
    pred, gt = _check_image_pair(pred, gt)
    values = _row_iou_values(pred, gt, cls)
    return float(values.mean()) if values.size else None


class RowIoUCompat:
    """Accumulator of the compatibility block (``COMPAT_KEYS``): the original evaluator's row-IoU rules (§10)."""

    def __init__(self) -> None:
        self._class_sums = [0.0] * NUM_CLASSES
        self._class_counts = [0] * NUM_CLASSES
        self._mean_sum = 0.0
        self._mean_count = 0

    def add(self, pred_canvas: np.ndarray, gt_canvas: np.ndarray) -> None:
        """Add one sample: HxW class ids on the letterboxed canvas (448x448 in the original), padding included."""
        pred_canvas, gt_canvas = _check_image_pair(pred_canvas, gt_canvas)
        values: list[float | None] = []
        for cls in (BG, UNKNOWN, FG):
            rows = _row_iou_values(pred_canvas, gt_canvas, cls)
            values.append(float(rows.mean()) if rows.size else None)
        for cls, value in enumerate(values):
            if value is not None:
                self._class_sums[cls] += value
                self._class_counts[cls] += 1
        if all(value is not None for value in values):  # the mean counts only samples where every class has a value
            self._mean_sum += sum(v for v in values if v is not None) / NUM_CLASSES
            self._mean_count += 1

    def summary(self) -> dict[str, float]:
        """``COMPAT_KEYS``: per-class means over the samples with a value, and the mean IoU (NaN when none)."""
        per_class = [_ratio(self._class_sums[c], self._class_counts[c]) for c in range(NUM_CLASSES)]
        return dict(zip(COMPAT_KEYS, [*per_class, _ratio(self._mean_sum, self._mean_count)], strict=True))
