"""Foreground estimation (`jaxmatte.foreground`): accuracy against a known foreground, and time per image.

    python bench/foreground.py [--sizes 1080x1920,2160x3840] [--repeats 3] [--scenes 6] [--out FILE]

Accuracy: composites with a known foreground F (the built-in soft-alpha scenes: hair, fur, motion blur, with or
without a veil; and, when ../shared/realdata is present, the 27 alphamatting.com ground-truth alphas with their
photos as F over another photo of the set, flipped, as B), 8-bit like a real input. In the semi-transparent region
(0 < a < 1) it reports mean |F - F_true| in 8-bit levels for the naive cut-out (F = I) and the estimate, and the
same for a composite over a new background (what a viewer sees).

Timing: the NumPy path on the host, and the jitted JAX path on JAX's default device (the GPU when one is present):
the first call (compilation included) apart, then the mean of `--repeats` runs, the copy of F to the host included.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402

from bench.machine import cpu_name, publish  # noqa: E402
from jaxmatte import foreground as fg  # noqa: E402
from jaxmatte.data.io import read_image, read_mask  # noqa: E402
from jaxmatte.data.synthetic_matting import matting_sample  # noqa: E402

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "alphamatting_training_lowres"
NEW_BACKGROUND = np.array([0, 177, 64], np.float32)


def synthetic_cases(count: int, height: int = 256, width: int = 320) -> dict[str, list[tuple]]:
    """(uint8 image, float alpha, true foreground in [0, 255]) of `count` built-in scenes with hair, fur and motion
    blur only, and of `count` with a veil (a large semi-transparent sheet over the textured background)."""
    groups: dict[str, list[tuple]] = {"without a veil": [], "with a veil": []}
    seed = 0
    while min(len(cases) for cases in groups.values()) < count:
        sample = matting_sample(np.random.default_rng(seed), height, width)
        cases = groups["with a veil" if "veil" in sample.effects else "without a veil"]
        if len(cases) < count:
            cases.append((sample.image_u8, sample.alpha, sample.foreground))
        seed += 1
    return {
        f"synthetic, hair / fur / motion blur {name} ({count} x {height}x{width})": cases
        for name, cases in groups.items()
    }


def realdata_cases() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    import cv2

    photos = sorted((REALDATA / "image").glob("GT*.png"))
    cases = []
    for index, photo in enumerate(photos):
        foreground = read_image(photo).astype(np.float32)
        alpha = read_mask(REALDATA / "alpha" / photo.name).astype(np.float32) / 255.0
        other = read_image(photos[(index + len(photos) // 2) % len(photos)])
        background = cv2.resize(other, foreground.shape[1::-1], interpolation=cv2.INTER_AREA)[::-1, ::-1]
        image = alpha[..., None] * foreground + (1 - alpha[..., None]) * background.astype(np.float32)
        cases.append((np.clip(np.floor(image + 0.5), 0, 255).astype(np.uint8), alpha, foreground))
    return cases


def accuracy(cases) -> dict[str, float]:
    """Mean absolute errors (8-bit levels) over the semi-transparent pixels of all cases."""
    sums = dict.fromkeys(("naive F", "estimate F", "naive composite", "estimate composite"), 0.0)
    pixels = 0
    for image, alpha, truth in cases:
        region = (alpha > 0) & (alpha < 1)
        estimate = fg.foreground_uint8(image, alpha, backend="numpy").astype(np.float32)
        weight = alpha[..., None]
        true_composite = weight * truth + (1 - weight) * NEW_BACKGROUND
        for name, colours in (("naive", image.astype(np.float32)), ("estimate", estimate)):
            sums[f"{name} F"] += np.abs(colours - truth)[region].mean(axis=-1).sum()
            composite = weight * colours + (1 - weight) * NEW_BACKGROUND
            sums[f"{name} composite"] += np.abs(composite - true_composite)[region].mean(axis=-1).sum()
        pixels += int(region.sum())
    return {name: total / pixels for name, total in sums.items()}


def timings(height: int, width: int, repeats: int) -> dict[str, float]:
    sample = matting_sample(np.random.default_rng(0), height, width)
    image, alpha = sample.image_u8, sample.alpha
    result = {}
    start = time.perf_counter()
    fg.estimate_foreground_numpy(image, alpha)
    result["numpy"] = time.perf_counter() - start
    device_image, device_alpha = jax.device_put(image.astype(np.float32) / 255.0), jax.device_put(alpha)
    start = time.perf_counter()
    jax.block_until_ready(fg.estimate_foreground_jax(device_image, device_alpha))
    result["jax first call"] = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        foreground, _ = fg.estimate_foreground_jax(device_image, device_alpha)
        np.asarray(foreground)
        runs.append(time.perf_counter() - start)
    result["jax"] = float(np.mean(runs))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1080x1920,2160x3840", help="HxW image sizes to time, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scenes", type=int, default=6, help="synthetic scenes per accuracy row")
    parser.add_argument("--out", type=Path, help="also write the markdown tables here")
    args = parser.parse_args()

    device = jax.devices()[0]
    lines = [
        f"Foreground estimation, {fg.Settings()}",
        f"host: {cpu_name()}, Python {platform.python_version()}; JAX {jax.__version__} on {device.device_kind}",
        "",
        "| data | pixels in 0 < a < 1 | F error, naive | F error, estimate | composite error, naive "
        "| composite error, estimate |",
        "|---|---|---|---|---|---|",
    ]
    sets = synthetic_cases(args.scenes)
    if REALDATA.is_dir():
        sets["alphamatting.com alphas, photo over photo (27)"] = realdata_cases()
    for name, cases in sets.items():
        errors = accuracy(cases)
        pixels = sum(int(((alpha > 0) & (alpha < 1)).sum()) for _, alpha, _ in cases)
        lines.append(
            f"| {name} | {pixels} | {errors['naive F']:.2f} | {errors['estimate F']:.2f} "
            f"| {errors['naive composite']:.2f} | {errors['estimate composite']:.2f} |"
        )
    header = f"| size | NumPy (host) | JAX first call ({device.platform}) | JAX ({device.platform}) |"
    lines += ["", header, "|---|---|---|---|"]
    for size in args.sizes.split(","):
        height, width = (int(side) for side in size.split("x"))
        result = timings(height, width, args.repeats)
        lines.append(
            f"| {height}x{width} | {result['numpy']:.2f} s | {result['jax first call']:.2f} s | {result['jax']:.3f} s |"
        )
    table = "\n".join(lines)
    publish(table, args.out)


if __name__ == "__main__":
    main()
