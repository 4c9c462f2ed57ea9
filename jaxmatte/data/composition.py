"""Foreground / alpha / background folders composited on the fly (the Adobe Deep Matting layout, dim_prune.md §4).

A root holds ``fg/`` (foreground colours), ``alpha/`` (or ``mask/``, the 8-bit alpha of each foreground, matched by
stem) and ``bg/`` (backgrounds). `CompositionFolders` pairs every foreground with `backgrounds_per_fg` backgrounds by
the original's counter rule: record i uses foreground ``f = i // n`` and background ``(f * n + i % n) % num_bg``
(``n = backgrounds_per_fg``; with 431 foregrounds, 100 each and 43,100 backgrounds every background is used once).
Files are listed in sorted name order. Records::

    {"fg": HxWx3 uint8 RGB, "mask": HxW uint8 alpha, "bg": H'xW'x3 uint8 RGB, "name": "{fg stem}_{bg stem}"}

plus, with ``compose=True``, ``"image"``: the deterministic top-left composite of the test-set preparation (§4.1),
which makes the folders an evaluation source (the training augmentation composites with a random offset instead).

Composition (§4.1, §4.3 step 1): a background smaller than the foreground in either dimension is upscaled by the
larger of the two ratios (sizes rounded up, cv2 INTER_CUBIC); the window at the offset is blended as
I = a·F + (1 - a)·B in float32 with a = alpha / 255, then cast to uint8 by truncation.

`write_synthetic_composition` writes a small synthetic root of this layout (soft shapes with hair, fur, veils, motion
blur and thin wires over textured backgrounds, some backgrounds smaller than their foregrounds).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from jaxmatte.data.folders import GT_SUFFIX_ORDER, _checked_size
from jaxmatte.data.io import list_images, read_image, read_mask
from jaxmatte.data.synthetic import _background, _imwrite, _read_manifest, _wires
from jaxmatte.data.synthetic_matting import matting_sample

logger = logging.getLogger(__name__)

FG_DIR, BG_DIR = "fg", "bg"
ALPHA_DIRS = ("alpha", "mask")
BACKGROUNDS_PER_FG = 100
MANIFEST = "synthetic_composition.json"
FORMAT = "jaxmatte-synthetic-composition"
VERSION = 1


# ------------------------------------------------------------------------------------------------------ composition


def fit_background(background: np.ndarray, height: int, width: int) -> np.ndarray:
    """`background` upscaled (cv2 INTER_CUBIC, sizes rounded up) by max(width / bw, height / bh) when that exceeds 1,
    so that it covers a `height` x `width` foreground; otherwise unchanged."""
    bg_height, bg_width = background.shape[:2]
    ratio = max(width / bg_width, height / bg_height)
    if ratio <= 1:
        return background
    size = (math.ceil(bg_width * ratio), math.ceil(bg_height * ratio))
    return cv2.resize(background, size, interpolation=cv2.INTER_CUBIC)


def background_offset(
    background_shape: tuple[int, ...], height: int, width: int, rng: np.random.Generator | None
) -> tuple[int, int]:
    """(x, y) of the background window: uniform in [0, bw - w) and [0, bh - h) where the background is larger, else 0;
    always (0, 0) without `rng` (top-left)."""
    bg_height, bg_width = background_shape[:2]
    x = int(rng.integers(0, bg_width - width)) if rng is not None and bg_width > width else 0
    y = int(rng.integers(0, bg_height - height)) if rng is not None and bg_height > height else 0
    return x, y


def composite(
    foreground: np.ndarray, alpha: np.ndarray, background: np.ndarray, rng: np.random.Generator | None = None
) -> np.ndarray:
    """HxWx3 uint8 composite a·F + (1 - a)·B of an HxWx3 foreground, its HxW uint8 alpha and any background (see the
    module docstring); the window offset is random with `rng`, top-left without."""
    foreground, alpha = np.asarray(foreground), np.asarray(alpha)
    if alpha.ndim == 3 and alpha.shape[-1] == 1:
        alpha = alpha[..., 0]
    height, width = foreground.shape[:2]
    if foreground.ndim != 3 or foreground.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 foreground, got shape {foreground.shape}")
    if alpha.shape != (height, width):
        raise ValueError(f"alpha shape {alpha.shape} does not match the foreground's {height}x{width}")
    background = fit_background(np.asarray(background), height, width)
    x, y = background_offset(background.shape, height, width, rng)
    window = background[y : y + height, x : x + width].astype(np.float32)
    a = (alpha.astype(np.float64) / 255.0).astype(np.float32)[..., None]
    blended = a * foreground.astype(np.float32) + (np.float32(1.0) - a) * window
    return np.clip(blended, 0.0, 255.0).astype(np.uint8)


def composite_top_left(foreground: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The deterministic test-set composite (§4.1): `composite` with the top-left background window."""
    return composite(foreground, alpha, background, None)


# ----------------------------------------------------------------------------------------------------------- folders


class CompositionFolders:
    """Random-access source of foreground / background pairs; see the module docstring for the layout and records.

    `fg_dir`, `alpha_dir` (default: ``alpha/``, else ``mask/``) and `bg_dir` name the folders inside `root` (e.g.
    ``fg_test``, ``mask_test``, ``bg_test`` with ``backgrounds_per_fg=20`` for the prepared test split). Left out and
    listed in `problems` as ``(path, reason)``, logged once: foregrounds without alpha, alphas without foreground,
    duplicate stems and, with `validate`, files that cannot be read as images and alphas whose size differs from their
    foreground's. A missing folder, or no usable foreground or background, raises an error naming the path. Reading a
    file that went bad later raises `jaxmatte.data.io.ImageReadError` with its path.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        backgrounds_per_fg: int = BACKGROUNDS_PER_FG,
        validate: bool = True,
        compose: bool = False,
        fg_dir: str = FG_DIR,
        alpha_dir: str | None = None,
        bg_dir: str = BG_DIR,
    ):
        if int(backgrounds_per_fg) < 1:
            raise ValueError(f"backgrounds_per_fg must be >= 1, got {backgrounds_per_fg}")
        self.root = Path(root)
        self.backgrounds_per_fg = int(backgrounds_per_fg)
        self.compose = bool(compose)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: dataset root does not exist (or is not a folder)")
        fg_folder, alpha_folder, bg_folder = self._folders(fg_dir, alpha_dir, bg_dir)
        self.problems: list[tuple[Path, str]] = []
        self._foregrounds = self._pair_foregrounds(fg_folder, alpha_folder, validate)
        self._backgrounds = self._list_backgrounds(bg_folder, validate)
        if self.problems:
            listed = "\n".join(f"  {path}: {reason}" for path, reason in self.problems[:20])
            more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
            logger.warning("%d file(s) left out of %s:\n%s%s", len(self.problems), self.root, listed, more)
        if not self._foregrounds:
            raise ValueError(f"{fg_folder}: no usable foreground / alpha pairs{self._problem_hint()}")
        if not self._backgrounds:
            raise ValueError(f"{bg_folder}: no usable backgrounds{self._problem_hint()}")

    def __len__(self) -> int:
        return len(self._foregrounds) * self.backgrounds_per_fg

    def __getitem__(self, index: int) -> dict[str, Any]:
        fg_index, bg_index = self.pair(index)
        fg_path, alpha_path = self._foregrounds[fg_index]
        bg_path = self._backgrounds[bg_index]
        record = {
            "fg": read_image(fg_path),
            "mask": read_mask(alpha_path),
            "bg": read_image(bg_path),
            "name": f"{Path(fg_path).stem}_{Path(bg_path).stem}",
        }
        if record["mask"].shape != record["fg"].shape[:2]:
            raise ValueError(f"{alpha_path}: alpha is {record['mask'].shape}, its foreground {record['fg'].shape[:2]}")
        if self.compose:
            record["image"] = composite_top_left(record["fg"], record["mask"], record["bg"])
        return record

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.root)!r}, {len(self._foregrounds)} foregrounds x "
            f"{self.backgrounds_per_fg}, {len(self._backgrounds)} backgrounds, {len(self.problems)} problems)"
        )

    @property
    def num_foregrounds(self) -> int:
        return len(self._foregrounds)

    @property
    def num_backgrounds(self) -> int:
        return len(self._backgrounds)

    @property
    def names(self) -> list[str]:
        return [
            f"{Path(self._foregrounds[f][0]).stem}_{Path(self._backgrounds[b]).stem}"
            for f, b in (self.pair(i) for i in range(len(self)))
        ]

    def pair(self, index: int) -> tuple[int, int]:
        """(foreground index, background index) of record `index` (the counter rule of the module docstring)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} records")
        fg_index, slot = divmod(index, self.backgrounds_per_fg)
        return fg_index, (fg_index * self.backgrounds_per_fg + slot) % len(self._backgrounds)

    def paths(self, index: int) -> tuple[Path, Path, Path]:
        """(foreground, alpha, background) paths of record `index`."""
        fg_index, bg_index = self.pair(index)
        fg_path, alpha_path = self._foregrounds[fg_index]
        return Path(fg_path), Path(alpha_path), Path(self._backgrounds[bg_index])

    # ----------------------------------------------------------------------------------------------------- listing

    def _folders(self, fg_dir: str, alpha_dir: str | None, bg_dir: str) -> tuple[Path, Path, Path]:
        alpha_names = (alpha_dir,) if alpha_dir is not None else ALPHA_DIRS
        alpha_folder = next((self.root / n for n in alpha_names if (self.root / n).is_dir()), None)
        missing = [str(self.root / n) for n in (fg_dir, bg_dir) if not (self.root / n).is_dir()]
        if alpha_folder is None:
            missing.append(" or ".join(str(self.root / n) for n in alpha_names))
        if missing:
            found = sorted(p.name + "/" for p in self.root.iterdir() if p.is_dir())
            raise FileNotFoundError(
                f"{', '.join(missing)}: missing; a composition root holds {fg_dir}/, "
                f"{' or '.join(n + '/' for n in alpha_names)} and {bg_dir}/ (found {', '.join(found) or 'nothing'})"
            )
        return self.root / fg_dir, alpha_folder, self.root / bg_dir

    def _pair_foregrounds(self, fg_folder: Path, alpha_folder: Path, validate: bool) -> list[tuple[str, str]]:
        foregrounds: dict[str, Path] = {}
        for path in list_images(fg_folder):
            if path.stem in foregrounds:
                self.problems.append((path, f"duplicate foreground stem, {foregrounds[path.stem].name} is used"))
                continue
            foregrounds[path.stem] = path
        alphas: dict[str, Path] = {}
        rank = {suffix: position for position, suffix in enumerate(GT_SUFFIX_ORDER)}
        for path in sorted(list_images(alpha_folder), key=lambda p: (p.stem, rank.get(p.suffix.lower(), len(rank)))):
            if path.stem in alphas:
                self.problems.append((path, f"duplicate alpha stem, {alphas[path.stem].name} is used"))
                continue
            alphas[path.stem] = path
        for stem, path in alphas.items():
            if stem not in foregrounds:
                self.problems.append((path, f"alpha without a foreground in {fg_folder.name}/"))
        pairs = []
        for stem, fg_path in foregrounds.items():
            alpha_path = alphas.get(stem)
            if alpha_path is None:
                self.problems.append((fg_path, f"foreground without an alpha in {alpha_folder.name}/"))
                continue
            if validate and not self._valid_pair(fg_path, alpha_path):
                continue
            pairs.append((str(fg_path), str(alpha_path)))
        return pairs

    def _list_backgrounds(self, bg_folder: Path, validate: bool) -> list[str]:
        backgrounds = []
        for path in list_images(bg_folder):
            if validate:
                _, problem = _checked_size(path)
                if problem is not None:
                    self.problems.append((path, problem))
                    continue
            backgrounds.append(str(path))
        return backgrounds

    def _valid_pair(self, fg_path: Path, alpha_path: Path) -> bool:
        sizes = []
        for path in (fg_path, alpha_path):
            size, problem = _checked_size(path)
            if problem is not None:
                self.problems.append((path, problem))
                return False
            sizes.append(size)
        if sizes[0] != sizes[1]:
            (fw, fh), (aw, ah) = sizes
            self.problems.append((fg_path, f"foreground is {fw}x{fh} but its alpha {alpha_path.name} is {aw}x{ah}"))
            return False
        return True

    def _problem_hint(self) -> str:
        if not self.problems:
            return ""
        path, reason = self.problems[0]
        return f" ({len(self.problems)} file(s) left out, e.g. {path}: {reason})"


# --------------------------------------------------------------------------------------------------------- synthetic


def write_synthetic_composition(
    root: str | os.PathLike,
    *,
    num_fg: int = 6,
    num_bg: int = 12,
    size: tuple[int, int] = (96, 160),
    seed: int = 0,
    jpeg_quality: int = 92,
) -> Path:
    """Write (or reuse) a synthetic composition root: ``fg/fg_XXXXX.png``, ``alpha/fg_XXXXX.png``,
    ``bg/bg_XXXXX.jpg`` and a manifest; returns `root`.

    Foreground heights and widths are drawn from the inclusive range `size`; backgrounds from 0.6x its low end to
    1.5x its high end, so that some must be upscaled. Every file depends only on (seed, kind, index). A folder
    written with other settings is rewritten; one not written here is never overwritten.
    """
    root = Path(root)
    low, high = int(size[0]), int(size[1])
    if not 32 <= low <= high:
        raise ValueError(f"size needs 32 <= low <= high, got {size}")
    if num_fg < 1 or num_bg < 1:
        raise ValueError(f"need at least one foreground and one background, got {num_fg} and {num_bg}")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "seed": int(seed),
        "num_fg": int(num_fg),
        "num_bg": int(num_bg),
        "size": [low, high],
        "jpeg_quality": int(jpeg_quality),
    }
    manifest_path = root / MANIFEST
    previous = _read_manifest(manifest_path, FORMAT)
    if previous == manifest and _complete(root, manifest):
        return root
    folders = {name: root / name for name in (FG_DIR, ALPHA_DIRS[0], BG_DIR)}
    if previous is not None:
        manifest_path.unlink()
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)
    for folder in folders.values():
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder}: exists and was not written by write_synthetic_composition")
        folder.mkdir(parents=True, exist_ok=True)

    for index in range(num_fg):
        rng = np.random.default_rng([int(seed), 1, index])
        height, width = (int(v) for v in rng.integers(low, high + 1, 2))
        foreground, alpha = synthetic_foreground(rng, height, width)
        _imwrite(folders[FG_DIR] / f"{_fg_stem(index)}.png", foreground[..., ::-1])
        _imwrite(folders[ALPHA_DIRS[0]] / f"{_fg_stem(index)}.png", alpha)
    for index in range(num_bg):
        rng = np.random.default_rng([int(seed), 2, index])
        height, width = (int(v) for v in rng.integers(int(0.6 * low), int(1.5 * high) + 1, 2))
        background = np.clip(np.floor(_background(rng, height, width) + 0.5), 0, 255).astype(np.uint8)
        quality = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
        _imwrite(folders[BG_DIR] / f"{_bg_stem(index)}.jpg", background[..., ::-1], quality)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return root


def synthetic_foreground(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(HxWx3 uint8 RGB foreground, HxW uint8 alpha): a soft matting scene's foreground layer plus thin wires."""
    sample = matting_sample(rng, height, width)
    alpha = sample.alpha + 0.8 * _wires(rng, height, width) * (1.0 - sample.alpha)
    foreground = np.clip(np.floor(sample.foreground + 0.5), 0, 255).astype(np.uint8)
    return foreground, np.clip(np.floor(alpha * 255.0 + 0.5), 0, 255).astype(np.uint8)


def _fg_stem(index: int) -> str:
    return f"fg_{index:05d}"


def _bg_stem(index: int) -> str:
    return f"bg_{index:05d}"


def _complete(root: Path, manifest: dict) -> bool:
    expected = [root / FG_DIR / f"{_fg_stem(i)}.png" for i in range(manifest["num_fg"])]
    expected += [root / ALPHA_DIRS[0] / f"{_fg_stem(i)}.png" for i in range(manifest["num_fg"])]
    expected += [root / BG_DIR / f"{_bg_stem(i)}.jpg" for i in range(manifest["num_bg"])]
    return all(path.is_file() for path in expected)
