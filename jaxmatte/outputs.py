"""Output kinds: how a system's canvas output becomes a result at the image's original size, and how it is saved.

- ``alpha``: (S, S[, 1]) float in [0, 1] -> H x W uint8 matte (`ResizePolicy.restore`, then x255 rounded or truncated);
- ``trimap``: (S, S, C) class logits -> H x W uint8 class ids (0 background, 1 unknown, 2 foreground): the logits
  are restored bilinearly (crop the padding, resize to H x W) and the argmax taken at the original resolution;
  saved as a PNG with the values 0 / 128 / 255.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxmatte.data.transforms import ResizePolicy, to_uint8
from jaxmatte.preprocessing import OUTPUT_KINDS

KINDS = OUTPUT_KINDS
TRIMAP_PNG_VALUES = np.array([0, 128, 255], dtype=np.uint8)
# class colours of overlays: background blue, unknown yellow, foreground red
TRIMAP_COLOURS = np.array([[40, 80, 255], [255, 220, 0], [255, 40, 40]], dtype=np.uint8)


def finish(kind: str, prediction: np.ndarray, placement: Any, policy: ResizePolicy, quantization: str = "round"):
    """The H x W uint8 result of one canvas prediction (see the module docstring)."""
    if kind == "alpha":
        return to_uint8(policy.restore(prediction, placement), quantization)
    if kind == "trimap":
        logits = policy.restore(prediction, placement)
        if logits.ndim != 3:
            raise ValueError(f"trimap outputs are class logits (S, S, C), got shape {np.shape(prediction)}")
        return np.argmax(logits, axis=-1).astype(np.uint8)
    raise ValueError(f"unknown output kind {kind!r}; known: {KINDS}")


def to_png(kind: str, result: np.ndarray) -> np.ndarray:
    """What is written for a result: the alpha itself, or a trimap's classes as 0 / 128 / 255."""
    if kind == "alpha":
        return result
    if kind == "trimap":
        if result.size and int(result.max()) >= len(TRIMAP_PNG_VALUES):
            raise ValueError(f"trimap classes must be 0, 1 or 2, got a maximum of {int(result.max())}")
        return TRIMAP_PNG_VALUES[result]
    raise ValueError(f"unknown output kind {kind!r}; known: {KINDS}")


def overlay(image: np.ndarray, classes: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """uint8 RGB: the image blended with the class colours (`TRIMAP_COLOURS`) at `opacity`."""
    colours = TRIMAP_COLOURS[classes].astype(np.float32)
    blended = image.astype(np.float32) * (1.0 - opacity) + colours * opacity
    return np.clip(np.floor(blended + 0.5), 0, 255).astype(np.uint8)


def preview(kind: str, result: np.ndarray) -> np.ndarray:
    """A grey-level picture of a result (for sample grids): the alpha, or the trimap's 0 / 128 / 255."""
    return to_png(kind, result)
