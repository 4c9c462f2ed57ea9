"""Object masks and trimaps from ground-truth alpha, and the class labels of a dataset record (0 background,
1 unknown, 2 foreground).

`trimap_from_alpha` marks as unknown every pixel within `band` pixels (an elliptical structuring element of side
2 band + 1) of a fractional alpha value (0 < alpha < 255), the rest foreground (alpha 255) or background. It is the
label of records that come without a trimap (synthetic matting data, image / alpha folders). `record_labels` prefers
the record's own trimap, mapped as `jaxmatte.metrics.trimap.trimap_labels` says.

Input masks (the coarse object mask a mask-guided model reads) are {0, 1}: `mask_from_alpha` thresholds the alpha at
`INPUT_MASK_THRESHOLD`; `binarize_mask` takes a given mask file's values as they come (0 / 1 masks as is, 0 / 255 or
soft masks thresholded like alpha).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from jaxmatte.metrics.trimap import trimap_labels

DEFAULT_UNKNOWN_BAND = 7
INPUT_MASK_THRESHOLD = 30


def mask_from_alpha(alpha: np.ndarray) -> np.ndarray:
    """uint8 {0, 1}: alpha >= 30."""
    return (_plane(alpha) >= INPUT_MASK_THRESHOLD).astype(np.uint8)


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """uint8 {0, 1} of a given 8-bit object mask: one holding only 0 and 1 is taken as is, any other (0 / 255,
    soft) is thresholded at 30 like alpha."""
    mask = _plane(mask)
    if mask.size and int(mask.max()) <= 1:
        return (mask > 0).astype(np.uint8)
    return (mask >= INPUT_MASK_THRESHOLD).astype(np.uint8)


def _plane(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    return array[..., 0] if array.ndim == 3 else array


def trimap_from_alpha(alpha: np.ndarray, band: int = DEFAULT_UNKNOWN_BAND) -> np.ndarray:
    """uint8 trimap (0 / 128 / 255) of an H x W uint8 alpha; see the module docstring."""
    alpha = np.asarray(alpha)
    if alpha.ndim == 3 and alpha.shape[-1] == 1:
        alpha = alpha[..., 0]
    if alpha.dtype != np.uint8 or alpha.ndim != 2:
        raise ValueError(f"expected an HxW uint8 alpha, got {alpha.dtype} {alpha.shape}")
    if band < 0:
        raise ValueError(f"the unknown band must be >= 0 pixels, got {band}")
    fractional = ((alpha > 0) & (alpha < 255)).astype(np.uint8)
    if band > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
        fractional = cv2.dilate(fractional, kernel)
    trimap = np.where(alpha == 255, np.uint8(255), np.uint8(0))
    trimap[fractional > 0] = 128
    return trimap


def record_labels(record: dict[str, Any], band: int = DEFAULT_UNKNOWN_BAND) -> np.ndarray:
    """uint8 class ids of a record: its "trimap" mapped to classes, else derived from its "mask" (alpha)."""
    trimap = record.get("trimap")
    if trimap is None:
        trimap = trimap_from_alpha(record["mask"], band)
    return trimap_labels(trimap)
