"""Deep Image Matting data (dim_prune.md §4): trimap generation, the per-sample training pipeline, the fields.

`gen_trimap` draws a kernel size k in {1, 2, 3, 4} and an iteration count in 1..19, dilates and erodes the alpha
with the elliptical k x k element and marks 255 where the erosion is 255, 0 where the dilation is 0, 128 elsewhere.
The original passes the iteration count into OpenCV's ``dst`` slot, so exactly one iteration runs; ``faithful=True``
reproduces that (for k = 1, the identity, unknown = 0 < alpha < 255), ``faithful=False`` applies the drawn count.
Both modes draw the same numbers, so a seed gives the same stream either way.

`DIMAugment` (grain RandomMap) is §4.3 steps 1-8 on a record at its original resolution:

1. composite ``fg`` / ``mask`` / ``bg`` with a random background window (`jaxmatte.data.composition.composite`), or
   take the record's ``image`` (image / alpha folders);
2. crop size from `crop_sizes`; 3. trimap of the full alpha;
4. crop origin = a random unknown pixel minus half the crop, clamped at >= 0 only ((0, 0) without unknown pixels);
5. crop image and alpha with zero padding beyond the border, then INTER_NEAREST to `out_size` (both of them) when
   the crop size differs;
6. trimap of the cropped alpha; 7. horizontal flip of image, alpha and trimap together;
8. with `jitter` > 0 (training): torchvision ColorJitter(jitter, jitter, jitter) on the RGB image, PIL-exact.

It returns ``{"image": uint8 RGB, "mask": uint8 alpha, "trimap": uint8 0 / 128 / 255, "name"}``.

`DIMFields` turns a record into the model's arrays: "image" (ImageNet-normalised float32 HxWx3), "trimap"
(trimap / 255, float32 HxWx1), "alpha" (alpha / 255, float32 HxWx1) and "unknown" (float32 HxWx1, trimap == 128).
Training records go through the run's `ResizePolicy` (a no-op on `DIMAugment`'s out_size crops for a 320 canvas or the
``native`` policy). Evaluation keeps the native resolution: image and maps are zero-padded at the bottom / right to a
multiple of `stride` (32 = 2^5 for the five 2x2 poolings, so that no pooling drops a row or column) with
the ``native`` `ResizePolicy`; the placement is ``(H, W, 0, 0, H, W)`` and that policy's `restore` crops the
prediction back to H x W. Padded shapes differ between images, so evaluation batches hold one image (or images of one
size). The padding is zero in pixel values before normalisation, as the predictor's ``native`` policy does.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from typing import Any

import cv2
import grain
import numpy as np

from jaxmatte.data.composition import composite, composite_top_left
from jaxmatte.data.transforms import Placement, ResizePolicy, normalize

__all__ = [
    "CROP_SIZES",
    "EVAL_STRIDE",
    "OUT_SIZE",
    "UNKNOWN_CODE",
    "DIMAugment",
    "DIMFields",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "apply_color_jitter",
    "color_jitter",
    "composite",
    "composite_top_left",
    "crop_origin",
    "gen_trimap",
    "record_trimap",
    "safe_crop",
    "trimap_from_morphology",
]

UNKNOWN_CODE = 128
KERNEL_SIZES = (1, 2, 3, 4)
MAX_ITERATIONS = 19
CROP_SIZES = (320, 480, 640)
OUT_SIZE = 320
EVAL_STRIDE = 32
JITTER = 0.125


# ---------------------------------------------------------------------------------------------------------- trimaps


def _alpha_plane(alpha: np.ndarray) -> np.ndarray:
    alpha = np.asarray(alpha)
    if alpha.ndim == 3 and alpha.shape[-1] == 1:
        alpha = alpha[..., 0]
    if alpha.dtype != np.uint8 or alpha.ndim != 2:
        raise ValueError(f"expected an HxW uint8 alpha or trimap, got {alpha.dtype} {alpha.shape}")
    return alpha


def trimap_from_morphology(alpha: np.ndarray, kernel_size: int, iterations: int) -> np.ndarray:
    """uint8 trimap: 255 where the alpha eroded `iterations` times (elliptical `kernel_size` element) is 255, 0 where
    the dilated alpha is 0, 128 elsewhere (the border never erodes or dilates: OpenCV's default border value)."""
    alpha = _alpha_plane(alpha)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(kernel_size), int(kernel_size)))
    dilated = cv2.dilate(alpha, kernel, iterations=int(iterations))
    eroded = cv2.erode(alpha, kernel, iterations=int(iterations))
    trimap = np.full(alpha.shape, UNKNOWN_CODE, np.uint8)
    trimap[eroded >= 255] = 255
    trimap[dilated <= 0] = 0
    return trimap


def gen_trimap(alpha: np.ndarray, rng: np.random.Generator, *, faithful: bool) -> np.ndarray:
    """The training trimap of an HxW uint8 alpha (module docstring); draws k, then the iteration count."""
    kernel_size = int(rng.choice(KERNEL_SIZES))
    iterations = int(rng.integers(1, MAX_ITERATIONS + 1))
    return trimap_from_morphology(alpha, kernel_size, 1 if faithful else iterations)


def record_trimap(record: dict[str, Any], seed: int = 0) -> np.ndarray:
    """The record's "trimap", else `gen_trimap` (fixed rule) of its "mask" with a generator seeded by (seed, name)."""
    trimap = record.get("trimap")
    if trimap is not None:
        return _alpha_plane(trimap)
    rng = np.random.default_rng([int(seed), zlib.crc32(str(record.get("name", "")).encode())])
    return gen_trimap(record["mask"], rng, faithful=False)


# ------------------------------------------------------------------------------------------------------ cropping


def crop_origin(trimap: np.ndarray, crop_size: int, rng: np.random.Generator) -> tuple[int, int]:
    """(x, y): a uniformly chosen unknown pixel (row-major order) minus crop_size // 2, clamped at 0 (no upper clamp);
    (0, 0) when the trimap has no unknown pixel."""
    rows, cols = np.nonzero(trimap == UNKNOWN_CODE)
    if len(rows) == 0:
        return 0, 0
    pick = int(rng.integers(len(rows)))
    half = int(crop_size) // 2
    return max(0, int(cols[pick]) - half), max(0, int(rows[pick]) - half)


def safe_crop(array: np.ndarray, x: int, y: int, crop_size: int, out_size: int | None = None) -> np.ndarray:
    """The `crop_size` square at (x, y) of an HxW[xC] uint8 array, zeros beyond the border; INTER_NEAREST to
    `out_size` when given and different."""
    canvas = np.zeros((crop_size, crop_size, *array.shape[2:]), array.dtype)
    window = array[y : y + crop_size, x : x + crop_size]
    canvas[: window.shape[0], : window.shape[1]] = window
    if out_size is not None and out_size != crop_size:
        resized = cv2.resize(canvas, (out_size, out_size), interpolation=cv2.INTER_NEAREST)
        canvas = resized.reshape(out_size, out_size, *array.shape[2:])
    return canvas


# ------------------------------------------------------------------------------------------------- colour jitter

# torchvision's ColorJitter on a PIL image = PIL's ImageEnhance: blend(degenerate, image, factor) computed per value
# in float32 as d + f * (v - d), clipped to [0, 255] and truncated.


def _blend(degenerate: np.ndarray, image: np.ndarray, factor: float) -> np.ndarray:
    d = degenerate.astype(np.float32)
    out = d + np.float32(factor) * (image.astype(np.float32) - d)
    return np.clip(out, 0.0, 255.0).astype(np.uint8)


def _luma(image: np.ndarray) -> np.ndarray:
    """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
    rgb = image.astype(np.uint32)
    return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """``F.adjust_brightness`` on PIL: blend with black."""
    return _blend(np.zeros_like(image), image, factor)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """``F.adjust_contrast`` on PIL: blend with the grey level int(mean(L) + 0.5)."""
    mean = int(float(_luma(image).mean(dtype=np.float64)) + 0.5)
    return _blend(np.full_like(image, mean), image, factor)


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """``F.adjust_saturation`` on PIL: blend with the image's L replicated to RGB."""
    return _blend(np.repeat(_luma(image)[..., None], 3, axis=2), image, factor)


_ADJUST = (adjust_brightness, adjust_contrast, adjust_saturation)


def apply_color_jitter(image: np.ndarray, order: Sequence[int], factors: Sequence[float]) -> np.ndarray:
    """The adjustments (0 brightness, 1 contrast, 2 saturation) in `order`, adjustment i with ``factors[i]``."""
    for index in order:
        image = _ADJUST[int(index)](image, float(factors[int(index)]))
    return image


def color_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float = JITTER,
    contrast: float = JITTER,
    saturation: float = JITTER,
) -> np.ndarray:
    """ColorJitter(brightness, contrast, saturation) of an HxWx3 uint8 RGB image: a random order of the three and
    each factor uniform in [max(0, 1 - s), 1 + s] (hue off)."""
    order = rng.permutation(3)
    factors = [rng.uniform(max(0.0, 1.0 - s), 1.0 + s) for s in (brightness, contrast, saturation)]
    return apply_color_jitter(image, order, factors)


# --------------------------------------------------------------------------------------------------- augmentation


@dataclasses.dataclass(frozen=True)
class DIMAugment(grain.transforms.RandomMap):
    """The per-sample pipeline of §4.3 (module docstring); every random number comes from grain's per-record
    generator. A record's own trimap is ignored (both trimaps are generated from the alpha). `jitter` is the
    brightness, contrast and saturation strength of the colour jitter; 0 gives the original's validation pipeline
    (the same random crops, no jitter)."""

    crop_sizes: tuple[int, ...] = CROP_SIZES
    out_size: int = OUT_SIZE
    faithful_trimap: bool = False
    jitter: float = JITTER
    p_flip: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_sizes", tuple(int(s) for s in self.crop_sizes))
        if not self.crop_sizes or min(self.crop_sizes) < 1 or int(self.out_size) < 1:
            raise ValueError(f"crop sizes and out_size must be positive, got {self.crop_sizes} and {self.out_size}")
        if not 0.0 <= float(self.jitter) <= 1.0:
            raise ValueError(f"jitter must lie in [0, 1], got {self.jitter}")

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        alpha = _alpha_plane(element["mask"])
        if element.get("fg") is not None and element.get("bg") is not None:
            image = composite(element["fg"], alpha, element["bg"], rng)
        else:
            image = np.asarray(element["image"])
        if image.shape[:2] != alpha.shape:
            raise ValueError(f"{element.get('name', '')}: image {image.shape[:2]} and alpha {alpha.shape} differ")
        crop_size = self.crop_sizes[int(rng.integers(len(self.crop_sizes)))]
        trimap = gen_trimap(alpha, rng, faithful=self.faithful_trimap)
        x, y = crop_origin(trimap, crop_size, rng)
        image = safe_crop(image, x, y, crop_size, self.out_size)
        alpha = safe_crop(alpha, x, y, crop_size, self.out_size)
        trimap = gen_trimap(alpha, rng, faithful=self.faithful_trimap)
        if rng.random() < self.p_flip:
            image, alpha, trimap = (np.ascontiguousarray(a[:, ::-1]) for a in (image, alpha, trimap))
        if self.jitter > 0:
            image = color_jitter(image, rng, self.jitter, self.jitter, self.jitter)
        return {"image": image, "mask": alpha, "trimap": trimap, "name": element.get("name", "")}


# ---------------------------------------------------------------------------------------------------------- fields


@dataclasses.dataclass(frozen=True)
class DIMFields:
    """``fields(record, train) -> (arrays, placement)`` for the data pipeline (module docstring): "image", "trimap",
    "alpha", "unknown". Training uses `policy` (ground truth and trimap always nearest); evaluation the ``native``
    policy padding to a multiple of `stride` (or `policy` itself when it is ``native``). A record without a trimap
    gets `record_trimap`'s (fixed rule, seeded by `trimap_seed` and the record name); one without an "image" but with
    "fg" / "bg" is composited top-left."""

    policy: ResizePolicy
    stride: int = EVAL_STRIDE
    trimap_seed: int = 0

    def __post_init__(self) -> None:
        if self.policy.mask_resample != "nearest":  # trimaps are classes; the original resizes the alpha nearest too
            object.__setattr__(self, "policy", dataclasses.replace(self.policy, mask_resample="nearest"))
        if int(self.stride) < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")

    @property
    def eval_policy(self) -> ResizePolicy:
        if self.policy.kind == "native":
            return self.policy
        return ResizePolicy("native", int(self.stride), mask_resample="nearest")

    def __call__(self, record: dict[str, Any], train: bool) -> tuple[dict[str, np.ndarray], Placement]:
        policy = self.policy if train else self.eval_policy
        alpha = _alpha_plane(record["mask"])
        trimap = record_trimap(record, self.trimap_seed)
        image = record.get("image")
        if image is None:
            image = composite_top_left(record["fg"], alpha, record["bg"])
        canvas, placement = policy.image(np.asarray(image))
        trimap = policy.mask(trimap)
        alpha = policy.mask(alpha)
        fields = {
            "image": normalize(canvas),
            "trimap": (trimap.astype(np.float32) / np.float32(255.0))[..., None],
            "alpha": (alpha.astype(np.float32) / np.float32(255.0))[..., None],
            "unknown": (trimap == UNKNOWN_CODE).astype(np.float32)[..., None],
        }
        return fields, placement
