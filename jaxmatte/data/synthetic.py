"""Synthetic DIS-style data, written as a DIS-layout folder so the real loader reads it.

Each image composites a few foreground structures of the kinds that make dichotomous segmentation hard: thin
anti-aliased wires (1-3 px), meshes and chain-link lattices, objects with holes (rings, frames, perforated plates),
and hair-like tufts whose strands fade into partial alpha; over a textured, cluttered background (gradients, smooth
and fine noise, sharp shapes in background colours, and out-of-focus copies of foreground-like structures in
foreground-like colours). Cue for a model: foreground is saturated, bright and in focus; nothing in the background
is all three. The ground truth is the 8-bit alpha (mostly 0 / 255, soft along anti-aliased edges and strands).

`write_synthetic_dis(root)` writes ``root/<split>/im/<name>.jpg`` (every fifth one ``.png``) and
``root/<split>/gt/<name>.png`` plus ``root/synthetic.json``; called again with the same parameters it reuses the
folder. Every image depends only on (seed, split, index).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import zlib
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

MANIFEST = "synthetic.json"
FORMAT = "jaxmatte-synthetic-dis"
VERSION = 1
PNG_EVERY = 5  # every fifth image is stored as PNG, the others as JPEG
SUBPIXEL_BITS = 4
SUBPIXEL = 1 << SUBPIXEL_BITS
KINDS = ("wires", "mesh", "holes", "hair", "solid")


def write_synthetic_dis(
    root: str | os.PathLike,
    *,
    splits: Mapping[str, int] | None = None,
    size_range: tuple[tuple[int, int], tuple[int, int]] = ((192, 320), (192, 320)),
    seed: int = 0,
    jpeg_quality: int = 92,
) -> Path:
    """Write (or reuse) a synthetic DIS-layout dataset under `root`; returns `root`.

    `splits` maps split names to image counts (default train 96, val 16); `size_range` gives the inclusive
    (min, max) height and (min, max) width; heights and widths differ in every image.
    """
    root = Path(root)
    splits = dict(splits if splits is not None else {"train": 96, "val": 16})
    (min_h, max_h), (min_w, max_w) = size_range
    if not (0 < min_h <= max_h and 0 < min_w <= max_w) or max(max_h, max_w) < 16 or (min_h == max_h == min_w == max_w):
        raise ValueError(f"size_range needs 16+ px and room for non-square sizes, got {size_range}")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "seed": int(seed),
        "splits": {str(name): int(count) for name, count in splits.items()},
        "size_range": [[int(min_h), int(max_h)], [int(min_w), int(max_w)]],
        "jpeg_quality": int(jpeg_quality),
    }
    manifest_path = root / MANIFEST
    previous = _read_manifest(manifest_path)
    if previous == manifest and _complete(root, manifest):
        return root
    if previous is not None:  # ours, with other parameters (or incomplete): regenerate
        manifest_path.unlink()
        for name in previous.get("splits", {}):
            shutil.rmtree(root / str(name), ignore_errors=True)
    for name in splits:
        if (root / name).exists() and any((root / name).iterdir()):
            raise FileExistsError(f"{root / name}: exists and was not written by write_synthetic_dis; not overwriting")

    for name, count in manifest["splits"].items():
        image_dir, gt_dir = root / name / "im", root / name / "gt"
        image_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            rng = np.random.default_rng([int(seed), zlib.crc32(name.encode()), index])
            height, width = _draw_size(rng, (min_h, max_h), (min_w, max_w))
            image, alpha = synthetic_sample(rng, height, width)
            stem = _stem(name, index)
            if index % PNG_EVERY == PNG_EVERY - 1:
                _imwrite(image_dir / f"{stem}.png", image[..., ::-1])
            else:
                _imwrite(image_dir / f"{stem}.jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
            _imwrite(gt_dir / f"{stem}.png", alpha)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return root


def synthetic_sample(
    rng: np.random.Generator, height: int, width: int, kinds: tuple[str, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(HxWx3 uint8 RGB image, HxW uint8 alpha) of one synthetic scene; `kinds` (of `KINDS`, drawn in order) picks
    the foreground structures instead of the random two or three."""
    unknown = [kind for kind in kinds or () if kind not in KINDS]
    if unknown:
        raise ValueError(f"unknown structure kinds {unknown}; known: {KINDS}")
    image = _background(rng, height, width)
    alpha_total = np.zeros((height, width), np.float32)
    kinds = list(kinds) if kinds else _pick_kinds(rng)
    for kind in kinds:
        alpha = _DRAW[kind](rng, height, width)
        colour = _foreground_texture(rng, height, width)
        a = alpha[..., None]
        image = a * colour + (1.0 - a) * image
        alpha_total = alpha_total + alpha * (1.0 - alpha_total)
    image_u8 = np.clip(np.floor(image + 0.5), 0, 255).astype(np.uint8)
    alpha_u8 = np.clip(np.floor(alpha_total * 255.0 + 0.5), 0, 255).astype(np.uint8)
    return image_u8, alpha_u8


# ------------------------------------------------------------------------------------------------------- colours


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    pixel = np.array([[[hue * 179.0, saturation * 255.0, value * 255.0]]], np.float32).round().astype(np.uint8)
    return cv2.cvtColor(pixel, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _foreground_colour(rng: np.random.Generator) -> np.ndarray:
    return _hsv_to_rgb(rng.random(), rng.uniform(0.65, 1.0), rng.uniform(0.8, 1.0))


def _background_colour(rng: np.random.Generator) -> np.ndarray:
    return _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.12, 0.68))


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Zero-mean low-frequency noise in about [-1, 1]."""
    coarse = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _foreground_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A bright, saturated colour with a gentle gradient and fine grain."""
    colour_a, colour_b = _foreground_colour(rng), _foreground_colour(rng)
    mix = 0.35 * _gradient(rng, height, width)[..., None]
    texture = (1.0 - mix) * colour_a + mix * colour_b
    return texture + 4.0 * rng.standard_normal((height, width, 1), dtype=np.float32)


def _gradient(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A linear ramp in [0, 1] along a random direction."""
    angle = rng.uniform(0.0, 2.0 * math.pi)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = cols * math.cos(angle) + rows * math.sin(angle)
    return (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Gradient + smooth and fine noise, sharp clutter in background colours, blurred foreground-like distractors."""
    ramp = _gradient(rng, height, width)[..., None]
    image = (1.0 - ramp) * _background_colour(rng) + ramp * _background_colour(rng)
    image = image + 25.0 * _smooth_noise(rng, height, width, int(rng.integers(3, 9)))[..., None]
    image = image + rng.uniform(3.0, 10.0) * rng.standard_normal((height, width, 3), dtype=np.float32)

    for _ in range(int(rng.integers(4, 12))):  # sharp clutter: rectangles, ellipses, strokes
        layer = np.zeros((height, width), np.uint8)
        shape = rng.integers(3)
        centre = _point(rng, height, width)
        if shape == 0:
            size = rng.uniform(0.05, 0.3, 2) * (width, height)
            _fill(layer, _rotated_rectangle(centre, size, rng.uniform(0, 180)))
        elif shape == 1:
            _ellipse(layer, centre, rng.uniform(0.06, 0.4, 2) * (width, height) + 4, rng.uniform(0, 180))
        else:
            _polyline(layer, _curve(rng, height, width, rng.uniform(0.2, 0.7)), int(rng.integers(2, 6)))
        a = (layer.astype(np.float32) / 255.0)[..., None]
        image = a * _background_colour(rng) + (1.0 - a) * image

    for _ in range(int(rng.integers(1, 4))):  # out-of-focus distractors in foreground-like colours
        kind = KINDS[int(rng.integers(len(KINDS)))]
        alpha = _DRAW[kind](rng, height, width)
        sigma = rng.uniform(1.8, 3.5)
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma) * rng.uniform(0.5, 0.9)
        colour = _foreground_colour(rng) * rng.uniform(0.75, 0.95)
        a = alpha[..., None]
        image = a * colour + (1.0 - a) * image
    return image


# ------------------------------------------------------------------------------------------------------ geometry


def _draw_size(rng: np.random.Generator, heights: tuple[int, int], widths: tuple[int, int]) -> tuple[int, int]:
    while True:
        height, width = int(rng.integers(heights[0], heights[1] + 1)), int(rng.integers(widths[0], widths[1] + 1))
        if height != width:
            return height, width


def _point(rng: np.random.Generator, height: int, width: int, margin: float = 0.1) -> np.ndarray:
    return rng.uniform(margin, 1.0 - margin, 2) * (width, height)


def _curve(rng: np.random.Generator, height: int, width: int, relative_length: float, start=None) -> np.ndarray:
    """A smooth random walk (N x 2, x/y floats) of about `relative_length` x the image diagonal."""
    step = 3.0
    count = max(2, int(relative_length * math.hypot(height, width) / step))
    position = np.asarray(start if start is not None else _point(rng, height, width, 0.0), np.float64)
    heading = rng.uniform(0.0, 2.0 * math.pi)
    bend = rng.normal(0.0, rng.uniform(0.01, 0.08))
    turns = np.cumsum(rng.normal(bend, 0.06, count))
    angles = heading + turns
    steps = step * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return position + np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)[:-1]])


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points) * SUBPIXEL).astype(np.int32)


def _polyline(layer: np.ndarray, points: np.ndarray, thickness: int, value: int = 255) -> None:
    cv2.polylines(layer, [_fixed(points)], False, value, thickness, cv2.LINE_AA, SUBPIXEL_BITS)


def _fill(layer: np.ndarray, polygon: np.ndarray, value: int = 255) -> None:
    cv2.fillPoly(layer, [_fixed(polygon)], value, cv2.LINE_AA, SUBPIXEL_BITS)


def _ellipse(layer: np.ndarray, centre, size, angle_degrees: float, value: int = 255, thickness: int = -1) -> None:
    """An anti-aliased ellipse with full axis lengths `size` (width, height), rotated by `angle_degrees`."""
    box = (tuple(float(v) for v in centre), tuple(float(v) for v in size), float(angle_degrees))
    cv2.ellipse(layer, box, value, thickness, cv2.LINE_AA)


def _rotated_rectangle(centre, size, angle_degrees: float) -> np.ndarray:
    return cv2.boxPoints((tuple(float(v) for v in centre), tuple(float(v) for v in size), float(angle_degrees)))


def _to_alpha(layer: np.ndarray) -> np.ndarray:
    return layer.astype(np.float32) / 255.0


# ------------------------------------------------------------------------------------------ foreground structures


def _wires(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """1-5 long curves, 1-3 px, anti-aliased."""
    layer = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(1, 6))):
        _polyline(layer, _curve(rng, height, width, rng.uniform(0.4, 1.2)), int(rng.integers(1, 4)))
    return _to_alpha(layer)


def _mesh(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A grid or chain-link lattice of thin lines, clipped to a (rotated) rectangle or ellipse, with a rim."""
    lattice = np.zeros((height, width), np.uint8)
    spacing = rng.uniform(6.0, 16.0)
    thickness = int(rng.integers(1, 3))
    base_angle = rng.uniform(0.0, math.pi)
    crossing = math.pi / 2 if rng.random() < 0.5 else rng.uniform(math.pi / 4, math.pi / 3)  # grid or chain-link
    reach = math.hypot(height, width)
    centre = np.array([width / 2.0, height / 2.0])
    for angle in (base_angle, base_angle + crossing):
        direction = np.array([math.cos(angle), math.sin(angle)])
        normal = np.array([-direction[1], direction[0]])
        for offset in np.arange(-reach / 2, reach / 2, spacing):
            start, stop = centre + normal * offset - direction * reach, centre + normal * offset + direction * reach
            cv2.line(lattice, tuple(_fixed(start)), tuple(_fixed(stop)), 255, thickness, cv2.LINE_AA, SUBPIXEL_BITS)

    region = np.zeros((height, width), np.uint8)
    rim = np.zeros((height, width), np.uint8)
    region_centre = _point(rng, height, width, 0.3)
    size = rng.uniform(0.3, 0.7, 2) * (width, height)
    angle = rng.uniform(0.0, 180.0)
    if rng.random() < 0.5:
        corners = _rotated_rectangle(region_centre, size, angle)
        _fill(region, corners)
        cv2.polylines(rim, [_fixed(corners)], True, 255, int(rng.integers(2, 5)), cv2.LINE_AA, SUBPIXEL_BITS)
    else:
        _ellipse(region, region_centre, size, angle)
        _ellipse(rim, region_centre, size, angle, thickness=int(rng.integers(2, 5)))
    alpha = _to_alpha(lattice) * _to_alpha(region)
    return np.maximum(alpha, _to_alpha(rim))


def _holes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A ring, a frame or a perforated plate."""
    layer = np.zeros((height, width), np.uint8)
    centre = _point(rng, height, width, 0.25)
    short = min(height, width)
    kind = rng.integers(3)
    if kind == 0:  # ring(s)
        for _ in range(int(rng.integers(1, 3))):
            radius = rng.uniform(0.12, 0.35) * short
            ring_centre = tuple(_fixed(centre + rng.normal(0.0, 0.05 * short, 2)))
            thickness = int(rng.integers(3, max(4, int(radius * 0.4))))
            cv2.circle(layer, ring_centre, int(radius * SUBPIXEL), 255, thickness, cv2.LINE_AA, SUBPIXEL_BITS)
    elif kind == 1:  # frame with one or two inner openings
        size = rng.uniform(0.3, 0.65, 2) * (width, height)
        angle = rng.uniform(-30.0, 30.0)
        _fill(layer, _rotated_rectangle(centre, size, angle))
        border = rng.uniform(0.1, 0.25)
        if rng.random() < 0.5:
            _fill(layer, _rotated_rectangle(centre, size * (1.0 - 2 * border), angle), 0)
        else:
            theta = math.radians(angle)
            axis = np.array([math.cos(theta), math.sin(theta)]) * size[0] / 4.0
            inner = size * np.array([0.5 - 1.5 * border, 1.0 - 2 * border])
            for sign in (-1.0, 1.0):
                _fill(layer, _rotated_rectangle(centre + sign * axis, inner, angle), 0)
    else:  # perforated plate: a filled polygon or ellipse minus a grid of round holes
        axes = rng.uniform(0.18, 0.38, 2) * (width, height)
        _ellipse(layer, centre, 2 * axes, rng.uniform(0, 180))
        pitch = rng.uniform(9.0, 20.0)
        hole = rng.uniform(0.18, 0.35) * pitch
        for y in np.arange(centre[1] - axes[1], centre[1] + axes[1], pitch):
            for x in np.arange(centre[0] - axes[0], centre[0] + axes[0], pitch):
                cv2.circle(layer, tuple(_fixed((x, y))), int(hole * SUBPIXEL), 0, -1, cv2.LINE_AA, SUBPIXEL_BITS)
    return _to_alpha(layer)


def _hair(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A soft-edged blob with many 1 px strands that fade out (partial alpha) towards their tips."""
    centre = _point(rng, height, width, 0.3)
    axes = rng.uniform(0.08, 0.2, 2) * min(height, width)
    angle = rng.uniform(0.0, 180.0)
    blob = np.zeros((height, width), np.uint8)
    _ellipse(blob, centre, 2 * axes, angle)
    alpha = cv2.GaussianBlur(_to_alpha(blob), (0, 0), rng.uniform(0.6, 1.5))

    strands = np.zeros((height, width), np.float32)
    count = int(rng.integers(40, 140))
    flow = rng.uniform(0.0, 2.0 * math.pi)
    for _ in range(count):
        around = rng.uniform(0.0, 2.0 * math.pi)
        theta = math.radians(angle)
        local = np.array([axes[0] * math.cos(around), axes[1] * math.sin(around)]) * rng.uniform(0.6, 1.0)
        root = centre + np.array(
            [
                local[0] * math.cos(theta) - local[1] * math.sin(theta),
                local[0] * math.sin(theta) + local[1] * math.cos(theta),
            ]
        )
        outward = math.atan2(root[1] - centre[1], root[0] - centre[0])
        heading = outward + 0.6 * math.sin(flow - outward) + rng.normal(0.0, 0.3)
        length = rng.uniform(0.06, 0.25) * math.hypot(height, width)
        steps = max(3, int(length / 3.0))
        turns = np.cumsum(rng.normal(rng.normal(0.0, 0.05), 0.05, steps))
        directions = np.stack([np.cos(heading + turns), np.sin(heading + turns)], axis=1) * 3.0
        points = root + np.concatenate([np.zeros((1, 2)), np.cumsum(directions, axis=0)])
        # Each strand is drawn on its own small canvas (its bounding box), then merged with max.
        low = np.clip(np.floor(points.min(axis=0)).astype(int) - 2, 0, (width, height))
        high = np.clip(np.ceil(points.max(axis=0)).astype(int) + 3, 0, (width, height))
        if (high <= low).any():
            continue
        strand = np.zeros((high[1] - low[1], high[0] - low[0]), np.uint8)
        local_points = _fixed(points - low)
        start_strength = rng.uniform(0.6, 1.0)
        for index in range(steps):
            value = int(255 * start_strength * (1.0 - index / steps) ** 1.3)
            if value < 4:
                break
            start, stop = tuple(local_points[index]), tuple(local_points[index + 1])
            cv2.line(strand, start, stop, value, 1, cv2.LINE_AA, SUBPIXEL_BITS)
        window = strands[low[1] : high[1], low[0] : high[0]]
        np.maximum(window, _to_alpha(strand), out=window)
    return alpha + strands * (1.0 - alpha)


def _solid(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A filled irregular polygon (star-like), anti-aliased."""
    layer = np.zeros((height, width), np.uint8)
    centre = _point(rng, height, width, 0.25)
    corners = int(rng.integers(5, 14))
    angles = np.sort(rng.uniform(0.0, 2.0 * math.pi, corners))
    radii = rng.uniform(0.06, 0.25, corners) * min(height, width)
    polygon = centre + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
    _fill(layer, polygon)
    return _to_alpha(layer)


_DRAW = {"wires": _wires, "mesh": _mesh, "holes": _holes, "hair": _hair, "solid": _solid}


def _pick_kinds(rng: np.random.Generator) -> list[str]:
    """Two or three different structures; always one thin or soft kind (wires, mesh, hair)."""
    thin = ["wires", "mesh", "hair"]
    first = thin[int(rng.integers(len(thin)))]
    others = [kind for kind in KINDS if kind != first]
    extra = rng.choice(len(others), size=int(rng.integers(1, 3)), replace=False)
    return [first, *(others[int(i)] for i in extra)]


# ------------------------------------------------------------------------------------------------------- folder


def _stem(split: str, index: int) -> str:
    return f"{split}_{index:05d}"


def _imwrite(path: Path, array: np.ndarray, params: list[int] | None = None) -> None:
    if not cv2.imwrite(str(path), np.ascontiguousarray(array), params or []):
        raise OSError(f"{path}: could not be written")


def _read_manifest(path: Path, kind: str = FORMAT) -> dict | None:
    """The folder's manifest when it is readable and of `kind`, else None (the folder is then written anew)."""
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == kind else None


def _complete(root: Path, manifest: dict) -> bool:
    for name, count in manifest["splits"].items():
        for index in range(count):
            stem = _stem(name, index)
            suffix = ".png" if index % PNG_EVERY == PNG_EVERY - 1 else ".jpg"
            if (
                not (root / name / "im" / f"{stem}{suffix}").is_file()
                or not (root / name / "gt" / f"{stem}.png").is_file()
            ):
                return False
    return True
