"""The numbers the original systems print, reproduced under distinct names so they are never mistaken for the
standard DIS or Composition-1k metrics.

- ``TSR`` (TSR-Matte ``eval.py``): at the GT's resolution, prediction quantised by truncation (x255, ``uint8``), both
  divided by 255, float32 per-image arithmetic; Log_SAD = MAE x 1000, Real_SAD = per-image sum, MAE, MSE x 1000.
- ``TwinSwin`` (TwinSwin-Matte ``utils/metrics.py``): on the 1024x1024 letterbox canvas, padding included, GT
  nearest-resized; SAD = sum / 1000, MSE, Sobel gradient error x 1000, accuracy, MAE.
- ``DCP`` (DongGeun-Yoon/DCP ``test.py`` / ``utils.py``): float predictions with known regions forced, whole-image
  SAD / 1000, whole-image squared error over |U|, SciPy Gaussian-derivative Grad / 10, Conn with float64 ``arange``
  thresholds, row-major tie rule and empty thresholds skipped.

Every dataset value is the mean over images of the per-image values (``summarize_compat``).
"""

from collections.abc import Sequence

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

from jaxmatte.metrics.matting import largest_component, quantize_alpha

__all__ = [
    "COMPAT_KEYS",
    "TWINSWIN_CANVAS",
    "compat_image_metrics",
    "dcp_conn",
    "dcp_grad",
    "dcp_image_metrics",
    "dcp_mse",
    "dcp_sad",
    "letterbox",
    "summarize_compat",
    "tsr_image_metrics",
    "tsr_quantize",
    "twinswin_image_metrics",
]

COMPAT_KEYS: dict[str, tuple[str, ...]] = {
    "TSR": ("TSR_LogSAD", "TSR_RealSAD", "TSR_MAE", "TSR_MSEx1000"),
    "TwinSwin": (
        "TwinSwin_SAD1024",
        "TwinSwin_MSE1024",
        "TwinSwin_SobelGrad1024",
        "TwinSwin_Acc1024",
        "TwinSwin_MAE1024",
    ),
    "DCP": ("DCP_SAD", "DCP_MSE", "DCP_Grad", "DCP_Conn"),
}
TWINSWIN_CANVAS = 1024
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)
SOBEL_Y = SOBEL_X.T.copy()


def _system(name: str) -> str:
    for system in COMPAT_KEYS:
        if system.lower() == name.lower():
            return system
    raise ValueError(f"unknown system {name!r}; expected one of {tuple(COMPAT_KEYS)}")


def _gt_uint8(gt: np.ndarray) -> np.ndarray:
    gt = quantize_alpha(gt, "gt")
    if gt.ndim != 2:
        raise ValueError(f"gt must be a single-channel HxW array, got shape {gt.shape}")
    return gt


# --- TSR-Matte ---------------------------------------------------------------------------------------------------


def tsr_quantize(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """TSR's post-processing: float32 map resized bilinearly to ``shape`` (H, W) if needed, x255, truncated to uint8."""
    prob = np.asarray(prob, dtype=np.float32)
    if prob.shape != tuple(shape):
        prob = cv2.resize(prob, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(prob * np.float32(255), 0, 255).astype(np.uint8)


def tsr_image_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Per-image TSR numbers. ``pred``: uint8 at the GT size, or a float probability map of any size (tsr_quantize)."""
    gt = _gt_uint8(gt)
    pred = np.asarray(pred)
    if np.issubdtype(pred.dtype, np.floating):
        pred = tsr_quantize(pred, gt.shape)
    elif pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same shape for an 8-bit prediction")
    pred = quantize_alpha(pred, "pred")
    p = pred.astype(np.float32) / np.float32(255)
    g = gt.astype(np.float32) / np.float32(255)
    abs_diff = np.abs(p - g)
    mae = float(np.mean(abs_diff))  # float32 arithmetic, as the original
    return {
        "TSR_LogSAD": mae * 1000.0,
        "TSR_RealSAD": float(np.sum(abs_diff)),
        "TSR_MAE": mae,
        "TSR_MSEx1000": float(np.mean(np.square(p - g))) * 1000.0,
    }


# --- TwinSwin-Matte ----------------------------------------------------------------------------------------------


def letterbox(image: np.ndarray, size: int = TWINSWIN_CANVAS, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """LongestMaxSize(size) then centred zero PadIfNeeded(size, size), as the albumentations validation transform.

    s = size / max(H, W); h' = round(H s), w' = round(W s) (half to even); top = (size - h') // 2,
    left = (size - w') // 2, the remainder at the bottom / right.
    """
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_height, new_width = round(height * scale), round(width * scale)
    if (new_height, new_width) != (height, width):
        image = cv2.resize(image, (new_width, new_height), interpolation=interpolation)
    canvas = np.zeros((size, size, *image.shape[2:]), dtype=image.dtype)
    top, left = (size - new_height) // 2, (size - new_width) // 2
    canvas[top : top + new_height, left : left + new_width] = image
    return canvas


def _sobel_magnitude(image: np.ndarray) -> np.ndarray:
    """sqrt(Sx^2 + Sy^2 + 1e-8), Sobel cross-correlation with zero padding 1, float32."""
    grad_x = cv2.filter2D(image, cv2.CV_32F, SOBEL_X, borderType=cv2.BORDER_CONSTANT)
    grad_y = cv2.filter2D(image, cv2.CV_32F, SOBEL_Y, borderType=cv2.BORDER_CONSTANT)
    return np.sqrt(grad_x * grad_x + grad_y * grad_y + np.float32(1e-8))


def twinswin_image_metrics(pred: np.ndarray, gt: np.ndarray, canvas: int = TWINSWIN_CANVAS) -> dict[str, float]:
    """Per-image TwinSwin numbers on the letterbox canvas, padding included.

    ``gt``: uint8 at its original size (letterboxed here, nearest). ``pred``: the canvas-sized model output, or a
    prediction at the GT size (letterboxed here, bilinear); uint8 is divided by 255, floats are used as they are.
    """
    gt = _gt_uint8(gt)
    pred = np.asarray(pred)
    if pred.shape == gt.shape:
        pred = letterbox(pred, canvas, cv2.INTER_LINEAR)
    elif pred.shape != (canvas, canvas):
        raise ValueError(f"pred {pred.shape} must be the {canvas}x{canvas} canvas or match gt {gt.shape}")
    if pred.dtype == np.uint8:
        p = pred.astype(np.float32) / np.float32(255)
    elif np.issubdtype(pred.dtype, np.floating):
        p = pred.astype(np.float32)
    else:
        raise TypeError(f"pred must be uint8 or float, got {pred.dtype}")
    g = letterbox(gt, canvas, cv2.INTER_NEAREST).astype(np.float32) / np.float32(255)
    diff = (p - g).astype(np.float64)
    mae = float(np.mean(np.abs(diff)))
    grad_diff = (_sobel_magnitude(p) - _sobel_magnitude(g)).astype(np.float64)
    return {
        "TwinSwin_SAD1024": float(np.sum(np.abs(diff))) / 1000.0,
        "TwinSwin_MSE1024": float(np.mean(np.square(diff))),
        "TwinSwin_SobelGrad1024": float(np.mean(np.square(grad_diff))) * 1000.0,
        "TwinSwin_Acc1024": (1.0 - mae) * 100.0,
        "TwinSwin_MAE1024": mae,
    }


# --- DCP (dcp_compat) --------------------------------------------------------------------------------------------


def dcp_sad(pred: np.ndarray, gt: np.ndarray) -> float:
    """DCP SAD: whole-image sum of |pred - gt| / 1000 (alphas in [0, 1])."""
    return float(np.sum(np.abs(pred - gt))) / 1000.0


def dcp_mse(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """DCP MSE: whole-image sum of (pred - gt)^2 divided by the number of unknown pixels."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sum((pred - gt) ** 2) / np.sum(mask))


def dcp_grad(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, sigma: float = 1.4) -> float:
    """DCP Grad: SciPy Gaussian first derivatives (float32 output), sum over the mask of the squared difference of
    amplitudes, / 10."""

    def amplitude(alpha: np.ndarray) -> np.ndarray:
        along_rows = gaussian_filter(alpha, sigma=sigma, order=[1, 0], output=np.float32)
        along_cols = gaussian_filter(alpha, sigma=sigma, order=[0, 1], output=np.float32)
        return np.sqrt(along_rows**2 + along_cols**2)

    error = np.square(amplitude(pred) - amplitude(gt))
    return float(np.sum(error * mask)) / 10.0


def dcp_conn(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """DCP Conn: float64 ``arange(0, 1.1, 0.1)`` thresholds, largest 4-component (row-major tie rule), thresholds
    without any component skipped, float32 level map, sum over the mask of |phi_pred - phi_gt| / 1000."""
    thresholds = np.arange(0, 1.1, 0.1)
    level = np.full(pred.shape, -1, dtype=np.float32)
    for index in range(1, thresholds.size):
        # NumPy 1.x value-based casting, which DCP ran under: a float32 array meets the threshold in float32.
        pred_above = pred >= pred.dtype.type(thresholds[index])
        gt_above = gt >= gt.dtype.type(thresholds[index])
        omega = largest_component(pred_above & gt_above, order="C")
        if omega is None:
            continue
        level[(level == -1) & ~omega] = thresholds[index - 1]
    level[level == -1] = 1

    def phi(alpha: np.ndarray) -> np.ndarray:
        distance = alpha - level
        return 1 - distance * (distance >= 0.15).astype(np.float32)

    return float(np.sum(np.abs(phi(pred) - phi(gt)) * mask)) / 1000.0


def dcp_image_metrics(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None = None) -> dict[str, float]:
    """Per-image DCP numbers at native resolution.

    ``pred``: float alpha in [0, 1] (its float dtype is kept: DCP evaluates float32 network outputs) or uint8 (divided
    by 255 in float64); ``gt``: uint8 (divided by 255 in float64). With a trimap, the prediction is forced to 0 / 1 on
    the known regions and the mask is ``trimap == 128``; without one, the mask is the whole image.
    """
    gt = _gt_uint8(gt)
    pred = np.asarray(pred)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same shape")
    pred = pred.copy() if np.issubdtype(pred.dtype, np.floating) else quantize_alpha(pred, "pred") / 255.0
    alpha = gt / 255.0
    if trimap is None:
        mask = np.ones(gt.shape, dtype=np.float64)
    else:
        trimap = np.asarray(trimap)
        if trimap.shape != gt.shape:
            raise ValueError(f"trimap shape {trimap.shape} does not match the alpha shape {gt.shape}")
        pred[trimap == 0] = 0.0
        pred[trimap == 255] = 1.0
        mask = (trimap == 128).astype(np.float64)
    return {
        "DCP_SAD": dcp_sad(pred, alpha),
        "DCP_MSE": dcp_mse(pred, alpha, mask),
        "DCP_Grad": dcp_grad(pred, alpha, mask),
        "DCP_Conn": dcp_conn(pred, alpha, mask),
    }


# --- uniform entry points ----------------------------------------------------------------------------------------


def compat_image_metrics(
    system: str, pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None = None
) -> dict[str, float]:
    """Per-image values of ``COMPAT_KEYS[system]``; ``trimap`` is used by DCP only (TSR and TwinSwin ignore it)."""
    system = _system(system)
    if system == "TSR":
        return tsr_image_metrics(pred, gt)
    if system == "TwinSwin":
        return twinswin_image_metrics(pred, gt)
    return dcp_image_metrics(pred, gt, trimap)


def summarize_compat(system: str, rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Dataset values of ``COMPAT_KEYS[system]``: the mean over images of the per-image values (float64)."""
    keys = COMPAT_KEYS[_system(system)]
    if len(rows) == 0:
        raise ValueError("no per-image rows to summarize")
    return {key: float(np.mean([row[key] for row in rows], dtype=np.float64)) for key in keys}
