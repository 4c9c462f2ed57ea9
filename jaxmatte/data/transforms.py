"""Host-side geometry, normalisation, augmentation and quantisation (numpy + OpenCV).

One `ResizePolicy` is used for training, validation and prediction alike:

- ``letterbox``: scale the longer side to `size` (s = size / max(H, W), h' = round(H s), w' = round(W s) with Python's
  round, half to even, at least 1), resize images with cv2 INTER_LINEAR and masks with cv2 INTER_NEAREST, then pad with
  zeros: top = (size - h') // 2, left = (size - w') // 2, the remainder going to the bottom and right.
- ``stretch``: resize both sides to `size` (images INTER_LINEAR, masks INTER_NEAREST), aspect ratio not kept.

`resample="pil_bilinear"` resizes images with PIL's BILINEAR filter instead (antialiased when downscaling, as
torchvision's `Resize` on PIL images); `mask_resample="linear"` resizes ground truth (soft alpha) with the image's
filter instead of nearest neighbour.

`ResizePolicy.restore` maps a prediction made on the size x size canvas back to the original H x W: crop the
letterbox padding (if any), then cv2 INTER_LINEAR to (W, H).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import cv2
import grain
import numpy as np
from PIL import Image

from jaxmatte import preprocessing

IMAGENET_MEAN = np.array(preprocessing.IMAGENET_MEAN, dtype=np.float32)
IMAGENET_STD = np.array(preprocessing.IMAGENET_STD, dtype=np.float32)
PLACEMENT_FIELDS = ("height", "width", "top", "left", "inner_height", "inner_width")


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where an original `height` x `width` image lies on the canvas: rows top.., columns left.., inner size."""

    height: int
    width: int
    top: int
    left: int
    inner_height: int
    inner_width: int

    def as_array(self) -> np.ndarray:
        """int32 (6,) in `PLACEMENT_FIELDS` order (what eval batches carry)."""
        return np.array([getattr(self, name) for name in PLACEMENT_FIELDS], dtype=np.int32)

    @classmethod
    def from_array(cls, values: Sequence[int] | np.ndarray) -> Placement:
        values = [int(v) for v in np.asarray(values).reshape(-1)]
        if len(values) != len(PLACEMENT_FIELDS):
            raise ValueError(f"a placement has {len(PLACEMENT_FIELDS)} values {PLACEMENT_FIELDS}, got {len(values)}")
        return cls(*values)


@dataclasses.dataclass(frozen=True)
class ResizePolicy:
    """How images of any size become model inputs, and how predictions go back.

    ``letterbox`` / ``stretch``: a `size` x `size` canvas. ``native``: the image at its own resolution, zero-padded at
    the bottom / right to a multiple of `size` (1: no padding), so inputs of different sizes have different shapes.
    """

    kind: Literal["letterbox", "stretch", "native"] = "letterbox"
    size: int = 1024
    resample: Literal["cv2_linear", "pil_bilinear"] = "cv2_linear"
    mask_resample: Literal["nearest", "linear"] = "nearest"

    def __post_init__(self):
        if self.kind not in ("letterbox", "stretch", "native"):
            raise ValueError(f"ResizePolicy.kind must be 'letterbox', 'stretch' or 'native', got {self.kind!r}")
        if self.resample not in ("cv2_linear", "pil_bilinear"):
            raise ValueError(f"ResizePolicy.resample must be 'cv2_linear' or 'pil_bilinear', got {self.resample!r}")
        if self.mask_resample not in ("nearest", "linear"):
            raise ValueError(f"ResizePolicy.mask_resample must be 'nearest' or 'linear', got {self.mask_resample!r}")
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"ResizePolicy.size must be a positive int, got {self.size!r}")

    def placement(self, height: int, width: int) -> Placement:
        """The canvas geometry for an original `height` x `width` image."""
        if height < 1 or width < 1:
            raise ValueError(f"cannot resize an empty image ({height}x{width})")
        if self.kind == "native":
            return Placement(height, width, 0, 0, height, width)
        if self.kind == "stretch":
            return Placement(height, width, 0, 0, self.size, self.size)
        scale = self.size / max(height, width)
        inner_height = min(self.size, max(1, round(height * scale)))
        inner_width = min(self.size, max(1, round(width * scale)))
        top, left = (self.size - inner_height) // 2, (self.size - inner_width) // 2
        return Placement(height, width, top, left, inner_height, inner_width)

    @property
    def fixed_shape(self) -> bool:
        """Whether every canvas is `size` x `size` (not so for ``native``)."""
        return self.kind != "native"

    def canvas_shape(self, height: int, width: int) -> tuple[int, int]:
        """The canvas (H, W) of an original `height` x `width` image."""
        if self.kind == "native":
            return -(-height // self.size) * self.size, -(-width // self.size) * self.size
        return self.size, self.size

    def image(self, image: np.ndarray) -> tuple[np.ndarray, Placement]:
        """(canvas x C uint8, placement); `resample` filter, zero padding."""
        placement = self.placement(*image.shape[:2])
        return self._place(image, placement, self.resample), placement

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """size x size uint8 canvas of an H x W mask; nearest (or the image filter for soft alpha), zero padding."""
        interpolation = "nearest" if self.mask_resample == "nearest" else self.resample
        return self._place(mask, self.placement(*mask.shape[:2]), interpolation)

    def restore(self, prediction: np.ndarray, placement: Placement | Sequence[int] | np.ndarray) -> np.ndarray:
        """An H x W float32 map from a size x size prediction: crop the padding, then cv2 INTER_LINEAR to (W, H)
        (half-pixel centres, no antialias). A size x size x C prediction (C > 1, e.g. class logits) keeps its
        channels: H x W x C."""
        if not isinstance(placement, Placement):
            placement = Placement.from_array(placement)
        prediction = np.asarray(prediction, dtype=np.float32)
        if prediction.ndim == 3 and prediction.shape[-1] == 1:
            prediction = prediction[..., 0]
        canvas = self.canvas_shape(placement.height, placement.width)
        if prediction.shape[:2] != canvas or prediction.ndim not in (2, 3):
            raise ValueError(f"expected a {canvas[0]}x{canvas[1]}[xC] prediction, got shape {prediction.shape}")
        inner = prediction[
            placement.top : placement.top + placement.inner_height,
            placement.left : placement.left + placement.inner_width,
        ]
        if inner.shape[:2] == (placement.height, placement.width):
            return np.ascontiguousarray(inner)
        restored = cv2.resize(inner, (placement.width, placement.height), interpolation=cv2.INTER_LINEAR)
        return restored.reshape(placement.height, placement.width, *inner.shape[2:])

    def _place(self, array: np.ndarray, placement: Placement, interpolation: str) -> np.ndarray:
        inner_shape = (placement.inner_height, placement.inner_width)
        resized = array
        if array.shape[:2] != inner_shape:
            resized = resize_uint8(array, inner_shape, interpolation)
            if array.ndim == 3 and resized.ndim == 2:  # OpenCV drops a single channel axis
                resized = resized[..., None]
        canvas_shape = self.canvas_shape(placement.height, placement.width)
        if inner_shape == canvas_shape:
            return np.ascontiguousarray(resized)
        canvas = np.zeros((*canvas_shape, *array.shape[2:]), dtype=array.dtype)
        canvas[
            placement.top : placement.top + placement.inner_height,
            placement.left : placement.left + placement.inner_width,
        ] = resized
        return canvas


def resize_uint8(array: np.ndarray, shape: tuple[int, int], interpolation: str) -> np.ndarray:
    """`array` (H x W [x C]) resized to `shape` (rows, columns): 'cv2_linear', 'nearest' (cv2) or 'pil_bilinear'."""
    if interpolation == "pil_bilinear":
        if array.dtype != np.uint8:
            raise ValueError(f"PIL resampling takes uint8 arrays, got {array.dtype}")
        squeeze = array.ndim == 3 and array.shape[2] == 1
        pil = Image.fromarray(array[..., 0] if squeeze else array)
        resized = np.asarray(pil.resize(shape[::-1], Image.BILINEAR))
        return resized[..., None] if squeeze else resized
    flags = {"cv2_linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}
    if interpolation not in flags:
        raise ValueError(f"unknown interpolation {interpolation!r}")
    return cv2.resize(array, shape[::-1], interpolation=flags[interpolation])


def normalize(image: np.ndarray) -> np.ndarray:
    """float32 (image / 255 - ImageNet mean) / ImageNet std, channels last."""
    return ((np.asarray(image, dtype=np.float32) / np.float32(255.0) - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def denormalize(image: np.ndarray) -> np.ndarray:
    """uint8 image from a `normalize`d one (rounded, clipped)."""
    values = (np.asarray(image, dtype=np.float32) * IMAGENET_STD + IMAGENET_MEAN) * 255.0
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


def to_uint8(probability: np.ndarray, mode: Literal["round", "truncate"] = "round") -> np.ndarray:
    """uint8 from a probability map: values clipped to [0, 1] (NaN -> 0), x255, then rounded or truncated.

    ``truncate`` is the original scripts' ``(p * 255).astype(uint8)`` bit for bit (a float32 product).
    """
    if mode == "truncate":
        values = np.clip(np.nan_to_num(np.asarray(probability, dtype=np.float32), nan=0.0), 0.0, 1.0)
        return (values * np.float32(255.0)).astype(np.uint8)
    if mode == "round":
        values = np.clip(np.nan_to_num(np.asarray(probability, dtype=np.float64), nan=0.0), 0.0, 1.0) * 255.0
        return np.floor(values + 0.5).astype(np.uint8)
    raise ValueError(f"to_uint8 mode must be 'round' or 'truncate', got {mode!r}")


@dataclasses.dataclass(frozen=True)
class Augment(grain.transforms.RandomMap):
    """Training augmentation at the original resolution, on {"image": HxWx3 uint8, "mask": HxW uint8, ...}.

    In order, each with its own probability:
    1. shift-scale (no rotation): scale about the image centre by a factor in [1 - scale, 1 + scale], translate by
       up to +-shift of the width / height; image bilinear, mask nearest, constant 0 border (p_shift_scale);
    2. horizontal flip (p_flip);
    3. brightness / contrast on the image only: v * (1 + c) + 255 b with c in +-contrast, b in +-brightness,
       rounded and clipped (p_brightness_contrast).
    All randomness comes from the per-element generator grain passes in (seed and index), so a record's
    augmentation is reproducible and independent of the number of workers. Other keys pass through unchanged.
    """

    p_shift_scale: float = 0.5
    shift: float = 0.1
    scale: float = 0.5
    p_flip: float = 0.5
    p_brightness_contrast: float = 0.2
    brightness: float = 0.2
    contrast: float = 0.2
    mask_interpolation: str = "nearest"  # shift-scale of the ground truth: nearest (binary masks) | linear (soft alpha)

    def __post_init__(self):
        if self.mask_interpolation not in ("nearest", "linear"):
            raise ValueError(
                f"Augment.mask_interpolation must be 'nearest' or 'linear', got {self.mask_interpolation!r}"
            )

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        # Draw every number up front, so the stream does not depend on which branches fire.
        draws = rng.random(8)
        image, mask = element["image"], element["mask"]
        if draws[0] < self.p_shift_scale:
            factor = 1.0 + self.scale * (2.0 * draws[1] - 1.0)
            shift_x, shift_y = self.shift * (2.0 * draws[2] - 1.0), self.shift * (2.0 * draws[3] - 1.0)
            image, mask = shift_scale(image, mask, factor, shift_x, shift_y, mask_interpolation=self.mask_interpolation)
        if draws[4] < self.p_flip:
            image, mask = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
        if draws[5] < self.p_brightness_contrast:
            gain = 1.0 + self.contrast * (2.0 * draws[6] - 1.0)
            offset = 255.0 * self.brightness * (2.0 * draws[7] - 1.0)
            image = brightness_contrast(image, gain, offset)
        return {**element, "image": image, "mask": mask}


def shift_scale(
    image: np.ndarray,
    mask: np.ndarray,
    factor: float,
    shift_x: float,
    shift_y: float,
    *,
    mask_interpolation: str = "nearest",
) -> tuple[np.ndarray, np.ndarray]:
    """Scale about the pixel-grid centre by `factor`, then translate by (shift_x W, shift_y H) pixels; zero border.
    The image is resampled bilinearly, the mask with `mask_interpolation` (nearest or linear)."""
    height, width = image.shape[:2]
    centre_x, centre_y = (width - 1) / 2.0, (height - 1) / 2.0
    matrix = np.array(
        [
            [factor, 0.0, (1.0 - factor) * centre_x + shift_x * width],
            [0.0, factor, (1.0 - factor) * centre_y + shift_y * height],
        ]
    )
    warp = dict(dsize=(width, height), borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    moved_image = cv2.warpAffine(image, matrix, flags=cv2.INTER_LINEAR, **warp)
    mask_flag = cv2.INTER_LINEAR if mask_interpolation == "linear" else cv2.INTER_NEAREST
    moved_mask = cv2.warpAffine(mask, matrix, flags=mask_flag, **warp)
    return moved_image.reshape(image.shape), moved_mask.reshape(mask.shape)


def brightness_contrast(image: np.ndarray, gain: float, offset: float) -> np.ndarray:
    """uint8 clip(round(v * gain + offset)), through a lookup table."""
    table = np.clip(np.floor(np.arange(256, dtype=np.float64) * gain + offset + 0.5), 0, 255).astype(np.uint8)
    return cv2.LUT(image, table)
