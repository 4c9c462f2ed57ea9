"""SegTrimap's data: the input mask, the class labels on the canvas, the unknown-region distance map, augmentation.

Per record (at the original resolution): the input mask is the record's given mask ("input_mask", binarised by
`binarize_mask`) or the ground-truth alpha >= 30 (spec §6.1); the labels are its trimap mapped to classes (0..14 BG,
15..229 unknown, 230..255 FG) or the trimap derived from its alpha (`jaxmatte.data.trimaps`). On the letterboxed
canvas (image bilinear, masks and labels nearest, centred zero padding) the padding is labelled `IGNORE_LABEL`
(jaxmatte's training) or background (`ignore_padding=False`, the original's), and the distance map of the unknown
region (SciPy EDT, `jaxmatte.losses.unknown_distance_map`) is computed once here for the DT loss.

`SegTrimapAugment` is the headline recipe's augmentation (spec §7.1): horizontal flip (image, masks, trimap),
brightness / contrast and an RGB shift on the image; optionally the mask corruptions of the later runs (§7.2:
erode / dilate / boundary removal with an elliptic kernel, a polygonal hole on the boundary) so the model learns to
repair coarse masks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cv2
import grain
import numpy as np

from jaxmatte import losses
from jaxmatte.data.transforms import ResizePolicy, brightness_contrast, normalize
from jaxmatte.data.trimaps import DEFAULT_UNKNOWN_BAND, binarize_mask, mask_from_alpha, record_labels

IGNORE_LABEL = -1


def input_mask(record: dict[str, Any]) -> np.ndarray:
    """The record's input mask at the original resolution (given, else from the alpha)."""
    given = record.get("input_mask")
    return binarize_mask(given) if given is not None else mask_from_alpha(record["mask"])


@dataclasses.dataclass(frozen=True)
class SegTrimapFields:
    """``fields(record, train) -> (arrays, placement)`` for the data pipeline: "image" (normalised canvas),
    "input_mask" (float32 (S, S, 1) in {0, 1}); for training also "labels" (int32 (S, S)) and "distance" (float32)."""

    policy: ResizePolicy
    ignore_padding: bool = True
    unknown_band: int = DEFAULT_UNKNOWN_BAND

    def __post_init__(self) -> None:
        if self.policy.mask_resample != "nearest":  # masks and labels are classes: never interpolated
            object.__setattr__(self, "policy", dataclasses.replace(self.policy, mask_resample="nearest"))

    def __call__(self, record: dict[str, Any], train: bool) -> tuple[dict[str, np.ndarray], Any]:
        image, placement = self.policy.image(record["image"])
        mask = self.policy.mask(input_mask(record))
        fields = {"image": normalize(image), "input_mask": (mask > 0).astype(np.float32)[..., None]}
        if train:
            labels = self.policy.mask(record_labels(record, self.unknown_band)).astype(np.int32)
            if self.ignore_padding:
                inside = np.zeros(labels.shape, dtype=bool)
                inside[
                    placement.top : placement.top + placement.inner_height,
                    placement.left : placement.left + placement.inner_width,
                ] = True
                labels[~inside] = IGNORE_LABEL
            fields["labels"] = labels
            fields["distance"] = losses.unknown_distance_map(labels).astype(np.float32)
        return fields, placement


@dataclasses.dataclass(frozen=True)
class SegTrimapAugment(grain.transforms.RandomMap):
    """Training augmentation on records at the original resolution; see the module docstring.

    `brightness` / `contrast`: ranges of b and c in v * (1 + c) + 255 b (albumentations' RandomBrightnessContrast);
    `rgb_shift`: per-channel integer shift in [-rgb_shift, rgb_shift]. Mask corruption (input mask only, in order):
    `p_edge_noise` (erode, dilate or remove the morphological gradient, elliptic kernel 3 / 5 / 7 / 9) and
    `p_hole` (a 3- to 6-gon hole, 10 px to 5 % of the image, centred on a boundary pixel). Every random number comes
    from grain's per-record generator.
    """

    p_flip: float = 0.5
    p_brightness_contrast: float = 0.75
    brightness: tuple[float, float] = (-0.25, 0.25)
    contrast: tuple[float, float] = (-0.15, 0.4)
    p_rgb_shift: float = 0.75
    rgb_shift: int = 10
    p_edge_noise: float = 0.0
    p_hole: float = 0.0

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        draws = rng.random(6)
        record = dict(element)
        record["input_mask"] = input_mask(record)
        if draws[0] < self.p_flip:
            for key in ("image", "mask", "trimap", "input_mask"):
                if record.get(key) is not None:
                    record[key] = np.ascontiguousarray(record[key][:, ::-1])
        image = record["image"]
        if draws[1] < self.p_brightness_contrast:
            b = rng.uniform(*self.brightness)
            c = rng.uniform(*self.contrast)
            image = brightness_contrast(image, 1.0 + c, 255.0 * b)
        if draws[2] < self.p_rgb_shift:
            shift = rng.integers(-self.rgb_shift, self.rgb_shift + 1, size=3)
            image = np.clip(image.astype(np.int16) + shift.astype(np.int16), 0, 255).astype(np.uint8)
        record["image"] = image
        if draws[3] < self.p_edge_noise:
            record["input_mask"] = edge_noise(record["input_mask"], rng)
        if draws[4] < self.p_hole:
            record["input_mask"] = hole_drop(record["input_mask"], rng)
        return record


def edge_noise(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Erode, dilate, or remove the morphological gradient of a {0, 1} mask (elliptic kernel of side 3, 5, 7 or 9)."""
    side = int(rng.choice([3, 5, 7, 9]))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    operation = int(rng.integers(3))
    if operation == 0:
        return cv2.erode(mask, kernel)
    if operation == 1:
        return cv2.dilate(mask, kernel)
    gradient = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, kernel)
    return (mask & (1 - gradient)).astype(np.uint8)


def hole_drop(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random 3- to 6-gon hole (area 10 px .. 5 % of the image) centred on a boundary pixel of a {0, 1} mask."""
    boundary = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    ys, xs = np.nonzero(boundary)
    if len(ys) == 0:
        return mask
    pick = int(rng.integers(len(ys)))
    centre = np.array([xs[pick], ys[pick]], dtype=np.float64)
    area = rng.uniform(10.0, max(10.0, 0.05 * mask.size))
    corners = int(rng.integers(3, 7))
    angles = np.sort(rng.uniform(0.0, 2.0 * np.pi, corners))
    radius = np.sqrt(area / np.pi)
    points = centre + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1) * rng.uniform(0.6, 1.4, (corners, 1))
    hole = np.zeros_like(mask)
    cv2.fillPoly(hole, [np.round(points).astype(np.int32)], 1)
    return (mask & (1 - hole)).astype(np.uint8)
