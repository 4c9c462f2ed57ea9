"""Built-in soft-alpha matting data: foregrounds with hair, fur, semi-transparent regions and motion blur composited
over textured backgrounds, written as a folder in the DINOv3-matting layout so the real loader reads it.

    root/<split>/rgb_images/<stem>.{jpg,png}   composite I = alpha * F + (1 - alpha) * B (float, then rounded)
    root/<split>/alpha_maps/<stem>.png         8-bit alpha
    root/<split>/trimaps/<stem>.png            0 / 128 / 255: unknown where 0 < alpha < 1, dilated by 3 px

`matting_sample` returns the in-memory layers (image, alpha, foreground, background, the effects used); a
``synthetic.json`` manifest makes `write_synthetic_matting` reuse a complete folder written with the same settings.
"""

from __future__ import annotations

import json
import math
import shutil
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from jaxmatte.data.synthetic import (
    _background,
    _draw_size,
    _foreground_texture,
    _hair,
    _imwrite,
    _point,
    _read_manifest,
    _stem,
)

MANIFEST = "synthetic.json"
FORMAT = "jaxmatte-synthetic-matting"
VERSION = 1
PNG_EVERY = 4
EFFECTS = ("hair", "fur", "veil", "motion_blur")
IMAGE_DIR, ALPHA_DIR, TRIMAP_DIR = "rgb_images", "alpha_maps", "trimaps"
UNKNOWN_DILATION = 3


@dataclass(frozen=True)
class MattingSample:
    """float32 layers in [0, 255] (image, foreground, background: HxWx3) and alpha in [0, 1] (HxW); `image_u8` /
    `alpha_u8` are what the folder stores."""

    image: np.ndarray
    alpha: np.ndarray
    foreground: np.ndarray
    background: np.ndarray
    effects: tuple[str, ...]

    @property
    def image_u8(self) -> np.ndarray:
        return np.clip(np.floor(self.image + 0.5), 0, 255).astype(np.uint8)

    @property
    def alpha_u8(self) -> np.ndarray:
        return np.clip(np.floor(self.alpha * 255.0 + 0.5), 0, 255).astype(np.uint8)


def matting_sample(rng: np.random.Generator, height: int, width: int) -> MattingSample:
    """One scene: a soft-edged body, then two or three of `EFFECTS`, composited over a textured background."""
    background = _background(rng, height, width)
    foreground = _foreground_texture(rng, height, width)
    alpha = _body(rng, height, width)
    picked = rng.permutation(len(EFFECTS))[: int(rng.integers(2, 4))]
    effects = tuple(EFFECTS[i] for i in sorted(picked))
    if "hair" in effects:
        strands = _hair(rng, height, width)
        alpha = alpha + strands * (1.0 - alpha)
    if "fur" in effects:
        alpha = np.maximum(alpha, _fur(rng, height, width))
    if "veil" in effects:
        veil, tint = _veil(rng, height, width)
        foreground = (veil[..., None] * tint + alpha[..., None] * foreground) / np.maximum(veil + alpha, 1e-6)[
            ..., None
        ]
        alpha = alpha + veil * (1.0 - alpha)
    if "motion_blur" in effects:
        kernel = _line_kernel(rng)
        premultiplied = cv2.filter2D(foreground * alpha[..., None], -1, kernel, borderType=cv2.BORDER_CONSTANT)
        alpha = cv2.filter2D(alpha, -1, kernel, borderType=cv2.BORDER_CONSTANT)
        foreground = np.where(alpha[..., None] > 1e-4, premultiplied / np.maximum(alpha, 1e-4)[..., None], foreground)
    alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32)
    foreground = np.clip(foreground, 0.0, 255.0).astype(np.float32)
    background = np.clip(background, 0.0, 255.0).astype(np.float32)
    image = alpha[..., None] * foreground + (1.0 - alpha[..., None]) * background
    return MattingSample(image.astype(np.float32), alpha, foreground, background, effects)


def _body(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth irregular blob (radius modulated by a few harmonics), drawn 4x supersampled for fractional edges."""
    scale = 4
    centre = _point(rng, height, width, 0.3) * scale
    radius = rng.uniform(0.15, 0.3) * min(height, width) * scale
    angles = np.linspace(0.0, 2.0 * math.pi, 180, endpoint=False)
    wobble = sum(rng.uniform(0.0, 0.15) * np.cos(k * angles + rng.uniform(0, 2 * math.pi)) for k in (2, 3, 5))
    polygon = centre + np.stack([np.cos(angles), np.sin(angles)], axis=1) * (radius * (1.0 + wobble))[:, None]
    big = np.zeros((height * scale, width * scale), np.uint8)
    cv2.fillPoly(big, [np.round(polygon).astype(np.int32)], 255, cv2.LINE_AA)
    return cv2.resize(big, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _fur(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A furry blob: the alpha ramps over a fringe a few pixels wide whose position follows fine-grained noise."""
    centre = _point(rng, height, width, 0.3)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    axes = rng.uniform(0.12, 0.25, 2) * min(height, width)
    distance = np.sqrt(((cols - centre[0]) / axes[0]) ** 2 + ((rows - centre[1]) / axes[1]) ** 2)
    fringe = rng.uniform(0.15, 0.35)  # fringe width relative to the radius
    fine = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), 0.7)
    angle = np.arctan2(rows - centre[1], cols - centre[0])
    tufts = 0.5 * np.sin(angle * int(rng.integers(20, 60)) + rng.uniform(0, 6.3))
    edge = 1.0 + fringe * (0.6 * fine + tufts)
    return np.clip((edge - distance) / fringe + 0.5, 0.0, 1.0).astype(np.float32)


def _veil(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A semi-transparent sheet (alpha 0.2-0.7 with a gentle variation) and its tint colour."""
    layer = np.zeros((height, width), np.uint8)
    centre = _point(rng, height, width, 0.25)
    size = rng.uniform(0.3, 0.6, 2) * (width, height)
    box = (tuple(float(v) for v in centre), tuple(float(v) for v in size), float(rng.uniform(0, 180)))
    cv2.ellipse(layer, box, 255, -1, cv2.LINE_AA)
    level = rng.uniform(0.2, 0.7)
    variation = 0.1 * cv2.resize(rng.uniform(-1, 1, (4, 4)).astype(np.float32), (width, height), cv2.INTER_CUBIC)
    veil = layer.astype(np.float32) / 255.0 * np.clip(level + variation, 0.05, 0.95)
    tint = rng.uniform(150.0, 255.0, 3).astype(np.float32)
    return veil.astype(np.float32), tint


def _line_kernel(rng: np.random.Generator) -> np.ndarray:
    """A normalised line kernel of 5-15 px along a random direction (linear motion blur)."""
    length = int(rng.integers(5, 16))
    size = length + (1 - length % 2)
    kernel = np.zeros((size, size), np.float32)
    angle = rng.uniform(0.0, math.pi)
    half = (length - 1) / 2.0
    centre = (size - 1) / 2.0
    start = (centre - half * math.cos(angle), centre - half * math.sin(angle))
    stop = (centre + half * math.cos(angle), centre + half * math.sin(angle))
    shift = 4
    to_fixed = lambda p: (int(round(p[0] * 16)), int(round(p[1] * 16)))  # noqa: E731
    cv2.line(kernel, to_fixed(start), to_fixed(stop), 1.0, 1, cv2.LINE_AA, shift)
    return kernel / kernel.sum()


def trimap_from_alpha(alpha_u8: np.ndarray, dilation: int = UNKNOWN_DILATION) -> np.ndarray:
    """0 background, 255 foreground, 128 unknown (0 < alpha < 255, dilated by `dilation` px)."""
    unknown = ((alpha_u8 > 0) & (alpha_u8 < 255)).astype(np.uint8)
    if dilation > 0:
        unknown = cv2.dilate(unknown, np.ones((2 * dilation + 1, 2 * dilation + 1), np.uint8))
    trimap = np.where(alpha_u8 == 255, 255, 0).astype(np.uint8)
    trimap[unknown > 0] = 128
    return trimap


def write_synthetic_matting(
    root: str | Path,
    *,
    splits: Mapping[str, int] | None = None,
    size: tuple[int, int] = (192, 288),
    seed: int = 0,
    jpeg_quality: int = 92,
) -> Path:
    """Write (or reuse) the soft-alpha dataset under `root`; returns `root`. `splits` maps split names to counts
    (default train 64, val 12); image heights and widths are drawn from the inclusive range `size` (non-square)."""
    root = Path(root)
    splits = dict(splits if splits is not None else {"train": 64, "val": 12})
    low, high = int(size[0]), int(size[1])
    if not 32 <= low < high:
        raise ValueError(f"size needs 32 <= low < high (non-square images), got {size}")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "seed": int(seed),
        "splits": {str(name): int(count) for name, count in splits.items()},
        "size": [low, high],
        "jpeg_quality": int(jpeg_quality),
    }
    manifest_path = root / MANIFEST
    previous = _read_manifest(manifest_path, FORMAT)
    if previous == manifest and _complete(root, manifest):
        return root
    if previous is not None:
        manifest_path.unlink()
        for name in previous.get("splits", {}):
            shutil.rmtree(root / str(name), ignore_errors=True)
    for name in splits:
        if (root / name).exists() and any((root / name).iterdir()):
            raise FileExistsError(f"{root / name}: exists and was not written by write_synthetic_matting")
    for name, count in manifest["splits"].items():
        folders = [root / name / d for d in (IMAGE_DIR, ALPHA_DIR, TRIMAP_DIR)]
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            rng = np.random.default_rng([int(seed), zlib.crc32(name.encode()), index, 7])
            height, width = _draw_size(rng, (low, high), (low, high))
            sample = matting_sample(rng, height, width)
            stem = _stem(name, index)
            image = sample.image_u8[..., ::-1]
            if index % PNG_EVERY == PNG_EVERY - 1:
                _imwrite(folders[0] / f"{stem}.png", image)
            else:
                _imwrite(folders[0] / f"{stem}.jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
            _imwrite(folders[1] / f"{stem}.png", sample.alpha_u8)
            _imwrite(folders[2] / f"{stem}.png", trimap_from_alpha(sample.alpha_u8))
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return root


def _complete(root: Path, manifest: dict) -> bool:
    for name, count in manifest["splits"].items():
        for index in range(count):
            stem = _stem(name, index)
            suffix = ".png" if index % PNG_EVERY == PNG_EVERY - 1 else ".jpg"
            expected = [
                root / name / IMAGE_DIR / f"{stem}{suffix}",
                root / name / ALPHA_DIR / f"{stem}.png",
                root / name / TRIMAP_DIR / f"{stem}.png",
            ]
            if not all(path.is_file() for path in expected):
                return False
    return True
