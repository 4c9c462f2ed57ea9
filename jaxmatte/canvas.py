"""Host-side model inputs (numpy / OpenCV / PIL, no JAX model code): an image [and its object mask or trimap] placed
on the model's canvas and normalised as its preprocessing record says.

Shared by `jaxmatte.predict.Predictor` and the exported-model loader (`jaxmatte.exported`), so that both feed a model
the same arrays:

- the image: the record's resize policy (`jaxmatte.data.transforms.ResizePolicy`), then ``(x / 255 - mean) / std``
  in float32, (S, S, 3) (native policy: the image's own size, padded to a multiple of S);
- the object mask (``input_mask``): binarised (`jaxmatte.data.trimaps.binarize_mask`: 0 / 1 masks as is, others at
  >= 30), resized to the image's size with nearest neighbour if it differs, placed like the image (nearest), zero
  outside: (S, S, 1) float32 in {0, 1};
- the trimap (``trimap``): the same placement of trimap / 255: (S, S, 1) float32 (0 background, 128 / 255 unknown,
  1 foreground).
"""

from __future__ import annotations

import numpy as np

from jaxmatte.data.transforms import Placement, resize_uint8
from jaxmatte.data.trimaps import binarize_mask
from jaxmatte.preprocessing import Preprocessing

COMPANIONS = ("input_mask", "trimap")  # the second inputs a system may read (`System.inputs[1]`)
COMPANION_NAMES = {"input_mask": "object mask", "trimap": "trimap"}


def prepare(
    preprocessing: Preprocessing,
    image: np.ndarray,
    companion: str | None = None,
    mask: np.ndarray | None = None,
    *,
    family: str = "this model",
) -> tuple[tuple[np.ndarray, ...], Placement]:
    """((canvas x 3 float32 normalised image[, canvas x 1 float32 companion]), placement) of an HxWx3 uint8 RGB
    `image` [and its HxW uint8 `mask`: the object mask or trimap named by `companion`]; see the module docstring."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
    policy = preprocessing.policy
    canvas, placement = policy.image(image)
    mean = np.asarray(preprocessing.mean, dtype=np.float32)
    std = np.asarray(preprocessing.std, dtype=np.float32)
    normalised = ((canvas.astype(np.float32) / np.float32(255.0) - mean) / std).astype(np.float32)
    if companion is None:
        return (normalised,), placement
    if companion not in COMPANIONS:
        raise ValueError(f"unknown second input {companion!r}; known: {COMPANIONS}")
    if mask is None:
        raise ValueError(f"{family} predicts from an image and its {COMPANION_NAMES[companion]}; none given")
    mask = np.asarray(mask)
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"expected an HxW uint8 {companion}, got {mask.dtype} {mask.shape}")
    values = binarize_mask(mask) if companion == "input_mask" else mask
    if values.shape != image.shape[:2]:
        values = resize_uint8(values, image.shape[:2], "nearest")
    placed = resize_uint8(values, (placement.inner_height, placement.inner_width), "nearest")
    second = np.zeros(normalised.shape[:2], np.float32)
    window = (
        slice(placement.top, placement.top + placement.inner_height),
        slice(placement.left, placement.left + placement.inner_width),
    )
    second[window] = placed if companion == "input_mask" else placed.astype(np.float32) / np.float32(255.0)
    return (normalised, second[..., None]), placement
