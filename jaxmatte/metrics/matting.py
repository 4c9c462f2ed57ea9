"""Composition-1k matting metrics as the official Adobe DIM MATLAB evaluation computes them.

``official`` mode: predictions and targets are 8-bit alpha mattes (float predictions in [0, 1] are quantised as
``clip(round(255 a), 0, 255)``), errors are summed over the unknown region of the trimap (``trimap == 128``) or over the
whole image when no trimap is given, and the keys carry the official scales: SAD / 1000, MSE raw, Grad / 1000,
Conn / 1000.

- SAD = sum_U |p - t| / 255 / 1000 and MSE = sum_U ((p - t) / 255)^2 / |U|, accumulated exactly on integers.
- Grad: per-image ``mat2gray``, 9x9 Gaussian-derivative kernel (sigma 1.4) normalised by its L2 norm, true convolution
  with replicated borders (``imfilter(..., 'replicate', 'conv')``), amplitude difference squared in single precision,
  summed over U, / 1000.
- Conn: thresholds k / 10 as the exact integer test ``10 p >= 255 k``; Omega = the largest 4-connected component of
  the pixels above the threshold in both mattes, ties resolved as MATLAB's ``bwconncomp`` (first component in
  column-major order of first pixels), an empty set giving an empty Omega; phi with the 0.15 rule in single precision,
  sum_U |phi_p - phi_t| / 1000.

Pure NumPy / OpenCV.
"""

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

__all__ = [
    "MATTING_KEYS",
    "UNKNOWN_VALUE",
    "connectivity_error",
    "connectivity_levels",
    "gradient_error",
    "gradient_kernel",
    "largest_component",
    "matting_image_metrics",
    "matting_region",
    "mse_error",
    "quantize_alpha",
    "sad_error",
    "summarize_matting",
    "unknown_region",
]

MATTING_KEYS = ("SAD", "MSE", "Grad", "Conn")
UNKNOWN_VALUE = 128
GRAD_SIGMA = 1.4
GRAD_EPSILON = 1e-2
CONN_LEVELS = 10  # thresholds k / 10, k = 0..10 (step 0.1)
CONN_PHI_CUTOFF = 0.15


def quantize_alpha(alpha: np.ndarray, name: str = "alpha") -> np.ndarray:
    """An alpha matte as uint8: uint8 as is, other integers checked to lie in 0..255, floats as clip(rint(255 a))."""
    alpha = np.asarray(alpha)
    if alpha.dtype == np.uint8:
        return alpha
    if alpha.dtype == np.bool_:
        raise TypeError(f"{name} must be uint8 (0..255) or float in [0, 1], got bool")
    if np.issubdtype(alpha.dtype, np.integer):
        if alpha.size and (alpha.min() < 0 or alpha.max() > 255):
            raise ValueError(f"{name} of dtype {alpha.dtype} must lie in 0..255")
        return alpha.astype(np.uint8)
    if np.issubdtype(alpha.dtype, np.floating):
        if not np.all(np.isfinite(alpha)):
            raise ValueError(f"{name} contains NaN or infinite values")
        return np.clip(np.rint(alpha.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    raise TypeError(f"{name} must be uint8 (0..255) or float in [0, 1], got {alpha.dtype}")


def matting_region(trimap: np.ndarray | None) -> Literal["unknown", "whole"]:
    """Which pixels the matting metrics cover: the trimap's unknown region, or the whole image without a trimap."""
    return "whole" if trimap is None else "unknown"


def unknown_region(trimap: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask U: ``trimap == 128``, or every pixel when ``trimap`` is None."""
    if trimap is None:
        return np.ones(shape, dtype=bool)
    trimap = np.asarray(trimap)
    if trimap.shape != tuple(shape):
        raise ValueError(f"trimap shape {trimap.shape} does not match the alpha shape {tuple(shape)}")
    return trimap == UNKNOWN_VALUE


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must be single-channel HxW arrays of the same shape")
    return quantize_alpha(pred, "pred"), quantize_alpha(gt, "gt")


def alpha_mae(pred: np.ndarray, gt: np.ndarray) -> float:
    """Plain MAE of two mattes over the whole image: mean |pred - gt| / 255 (uint8, or [0, 1] floats quantised);
    no min-max normalisation and no binarisation, unlike the DIS MAE."""
    pred, gt = _check_pair(pred, gt)
    diff = np.abs(pred.astype(np.int32) - gt.astype(np.int32))
    return float(np.sum(diff, dtype=np.int64)) / 255.0 / max(diff.size, 1)


def sad_error(pred: np.ndarray, gt: np.ndarray, region: np.ndarray) -> float:
    """Official SAD: sum over the region of |pred - gt| / 255, then / 1000 (uint8 inputs)."""
    diff = np.abs(pred.astype(np.int32) - gt.astype(np.int32))
    return float(np.sum(diff[region], dtype=np.int64)) / 255.0 / 1000.0


def mse_error(pred: np.ndarray, gt: np.ndarray, region: np.ndarray) -> float:
    """Official MSE: sum over the region of ((pred - gt) / 255)^2 divided by the region size (NaN when empty)."""
    count = int(np.count_nonzero(region))
    if count == 0:
        return float("nan")  # MATLAB's 0 / 0
    diff = pred.astype(np.int32) - gt.astype(np.int32)
    squared = np.sum(np.square(diff[region]), dtype=np.int64)
    return float(squared) / (255.0 * 255.0) / count


def _gaussian_factors(sigma: float, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """The 1-D Gaussian and its derivative sampled on the integer offsets of the MATLAB ``gaussgradient`` support."""
    halfsize = int(np.ceil(sigma * np.sqrt(-2.0 * np.log(np.sqrt(2.0 * np.pi) * sigma * epsilon))))
    offsets = np.arange(-halfsize, halfsize + 1, dtype=np.float64)
    gauss = np.exp(-(offsets**2) / (2.0 * sigma**2)) / (sigma * np.sqrt(2.0 * np.pi))
    dgauss = -offsets * gauss / sigma**2
    return gauss, dgauss


def gradient_kernel(sigma: float = GRAD_SIGMA, epsilon: float = GRAD_EPSILON) -> np.ndarray:
    """MATLAB ``gaussgradient``'s hx: G(row offset) * G'(column offset), normalised to unit L2 norm; hy = hx.T."""
    gauss, dgauss = _gaussian_factors(sigma, epsilon)
    kernel = np.outer(gauss, dgauss)
    return kernel / np.sqrt(np.sum(kernel * kernel))


def _mat2gray(image: np.ndarray) -> np.ndarray:
    """Per-image min-max scaling to [0, 1] in float64; a constant image maps to zeros (it has no gradient anyway)."""
    image = image.astype(np.float64)
    low, high = image.min(), image.max()
    if high == low:
        return np.zeros_like(image)
    return (image - low) / (high - low)


def _gradient_amplitude(image: np.ndarray, sigma: float) -> np.ndarray:
    """sqrt(gx^2 + gy^2) with gx = image (*) hx, gy = image (*) hx.T: true convolution, replicated borders."""
    gauss, dgauss = _gaussian_factors(sigma, GRAD_EPSILON)
    # hx = outer(gauss, dgauss) / (|gauss| |dgauss|) is separable; convolution = correlation with reversed taps.
    smooth = (gauss / np.linalg.norm(gauss))[::-1].copy()
    derive = (dgauss / np.linalg.norm(dgauss))[::-1].copy()
    border = cv2.BORDER_REPLICATE
    grad_x = cv2.sepFilter2D(image, cv2.CV_64F, derive, smooth, borderType=border)
    grad_y = cv2.sepFilter2D(image, cv2.CV_64F, smooth, derive, borderType=border)
    return np.sqrt(grad_x * grad_x + grad_y * grad_y)


def gradient_error(pred: np.ndarray, gt: np.ndarray, region: np.ndarray, sigma: float = GRAD_SIGMA) -> float:
    """Official Grad: sum over the region of (|grad pred| - |grad gt|)^2 on mat2gray images, then / 1000."""
    amp_pred = _gradient_amplitude(_mat2gray(pred), sigma).astype(np.float32)
    amp_gt = _gradient_amplitude(_mat2gray(gt), sigma).astype(np.float32)
    error = np.square(amp_pred - amp_gt)  # single precision, as MATLAB
    return float(np.sum(error[region], dtype=np.float64)) / 1000.0


def largest_component(mask: np.ndarray, order: Literal["F", "C"] = "F") -> np.ndarray | None:
    """The largest 4-connected component of ``mask`` (None when ``mask`` is empty).

    Ties go to the component whose first pixel comes first in ``order``: "F" (column-major) is MATLAB's
    ``bwconncomp`` numbering, "C" (row-major) is scikit-image's ``label``.
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    if count <= 1:
        return None
    areas = stats[1:, cv2.CC_STAT_AREA]
    largest = np.flatnonzero(areas == areas.max()) + 1
    winner = largest[0]
    if largest.size > 1:
        scan = labels.ravel(order=order)
        winner = scan[np.argmax(np.isin(scan, largest))]
    return labels == winner


def connectivity_levels(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Level index map of the official Conn (level = index / 10): k - 1 for the first k whose Omega misses the pixel."""
    pred10 = pred.astype(np.int32) * 10
    gt10 = gt.astype(np.int32) * 10
    level = np.full(pred.shape, -1, dtype=np.int8)
    for k in range(1, CONN_LEVELS + 1):
        both = (pred10 >= 255 * k) & (gt10 >= 255 * k)  # exactly single(p) / 255 >= k / 10
        omega = largest_component(both, order="F")
        unassigned = level < 0
        if omega is None:  # B and every later B are empty: Omega is empty, all remaining pixels settle here
            level[unassigned] = k - 1
            break
        level[unassigned & ~omega] = k - 1
    level[level < 0] = CONN_LEVELS
    return level


def connectivity_error(pred: np.ndarray, gt: np.ndarray, region: np.ndarray) -> float:
    """Official Conn (step 0.1): sum over the region of |phi_pred - phi_gt|, then / 1000."""
    level_values = (np.arange(CONN_LEVELS + 1) / CONN_LEVELS).astype(np.float32)
    level = level_values[connectivity_levels(pred, gt)]

    def phi(alpha: np.ndarray) -> np.ndarray:
        distance = alpha.astype(np.float32) / np.float32(255) - level
        return np.float32(1) - distance * (distance >= CONN_PHI_CUTOFF)

    error = np.abs(phi(pred) - phi(gt))
    return float(np.sum(error[region], dtype=np.float64)) / 1000.0


def matting_image_metrics(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None = None) -> dict[str, float]:
    """Official SAD, MSE, Grad, Conn of one image over the unknown region (whole image when ``trimap`` is None).

    ``pred`` and ``gt``: HxW uint8 (0..255), or float in [0, 1] (quantised); ``trimap``: HxW, unknown = 128.
    """
    pred, gt = _check_pair(pred, gt)
    region = unknown_region(trimap, pred.shape)
    return {
        "SAD": sad_error(pred, gt, region),
        "MSE": mse_error(pred, gt, region),
        "Grad": gradient_error(pred, gt, region),
        "Conn": connectivity_error(pred, gt, region),
    }


def summarize_matting(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Dataset values: the mean over images of each of ``MATTING_KEYS``."""
    if len(rows) == 0:
        raise ValueError("no per-image rows to summarize")
    return {key: float(np.mean([row[key] for row in rows], dtype=np.float64)) for key in MATTING_KEYS}
