"""DIS-layout folders (``root/im/<stem>.<ext>`` + ``root/gt/<stem>.png``) as a random-access source.

A `DISFolders` is what grain's `MapDataset.source` takes: picklable, `len()`, `[int]` returning
``{"image": HxWx3 uint8 RGB, "mask": HxW uint8, "name": stem}``, files read lazily through `jaxmatte.data.io`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from jaxmatte.data.io import EXIF_ORIENTATION_TAG, IMAGE_SUFFIXES, list_images, read_image, read_mask

logger = logging.getLogger(__name__)

# Ground-truth suffix preference when several files share a stem: png first, then the order of IMAGE_SUFFIXES.
GT_SUFFIX_ORDER: tuple[str, ...] = (".png", *(suffix for suffix in IMAGE_SUFFIXES if suffix != ".png"))


class DISFolders:
    """Image / ground-truth pairs from one or more DIS-layout roots, concatenated in the order given.

    Within a root, pairs are sorted by image file name. `problems` lists ``(path, reason)`` for what was left out:
    images without ground truth, ground truth without image, duplicate stems, and (with `validate`) files whose
    header cannot be read or whose size differs from the partner's. Problems are logged once, never raised.
    A missing root, or one without ``im/`` or ``gt/``, raises `FileNotFoundError` naming the path.
    Names are file stems; the same stem in two roots gives two records with the same name.
    """

    def __init__(self, roots: Sequence[str | os.PathLike] | str | os.PathLike, *, validate: bool = True):
        if isinstance(roots, str | os.PathLike):
            roots = [roots]
        self.roots: tuple[Path, ...] = tuple(Path(root) for root in roots)
        if not self.roots:
            raise ValueError("DISFolders needs at least one root folder")
        self.problems: list[tuple[Path, str]] = []
        pairs: list[tuple[str, str, str]] = []
        for root in self.roots:
            pairs.extend(self._pair(root, validate))
        self._pairs = pairs
        if self.problems:
            listed = "\n".join(f"  {path}: {reason}" for path, reason in self.problems[:20])
            more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
            logger.warning(
                "%d file(s) left out of %s:\n%s%s",
                len(self.problems),
                ", ".join(map(str, self.roots)),
                listed,
                more,
            )

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, gt_path, name = self._pairs[index]
        return {"image": read_image(image_path), "mask": read_mask(gt_path), "name": name}

    def __repr__(self) -> str:
        return f"DISFolders({[str(root) for root in self.roots]}, {len(self)} pairs, {len(self.problems)} problems)"

    @property
    def names(self) -> list[str]:
        return [name for _, _, name in self._pairs]

    def paths(self, index: int) -> tuple[Path, Path]:
        """(image path, ground-truth path) of pair `index`."""
        image_path, gt_path, _ = self._pairs[index]
        return Path(image_path), Path(gt_path)

    def _pair(self, root: Path, validate: bool) -> list[tuple[str, str, str]]:
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: dataset root does not exist (or is not a folder)")
        image_dir, gt_dir = root / "im", root / "gt"
        for folder in (image_dir, gt_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: missing; a DIS-layout root holds im/ (images) and gt/ (masks)")

        images: dict[str, Path] = {}
        for path in list_images(image_dir):
            if path.stem in images:
                self.problems.append((path, f"duplicate image stem, {images[path.stem].name} is used"))
                continue
            images[path.stem] = path

        masks: dict[str, Path] = {}
        rank = {suffix: position for position, suffix in enumerate(GT_SUFFIX_ORDER)}
        for path in sorted(list_images(gt_dir), key=lambda p: (p.stem, rank.get(p.suffix.lower(), len(rank)))):
            if path.stem in masks:
                self.problems.append((path, f"duplicate ground-truth stem, {masks[path.stem].name} is used"))
                continue
            masks[path.stem] = path

        for stem, path in masks.items():
            if stem not in images:
                self.problems.append((path, "ground truth without an image in im/"))
        pairs = []
        for stem, image_path in images.items():
            gt_path = masks.get(stem)
            if gt_path is None:
                self.problems.append((image_path, "image without ground truth in gt/"))
                continue
            if validate and not self._valid_pair(image_path, gt_path):
                continue
            pairs.append((str(image_path), str(gt_path), stem))
        return pairs

    def _valid_pair(self, image_path: Path, gt_path: Path) -> bool:
        sizes = []
        for path in (image_path, gt_path):
            size, problem = _checked_size(path)
            if problem is not None:
                self.problems.append((path, problem))
                return False
            sizes.append(size)
        if sizes[0] != sizes[1]:
            (iw, ih), (gw, gh) = sizes
            self.problems.append((image_path, f"image is {iw}x{ih} but its ground truth {gt_path.name} is {gw}x{gh}"))
            return False
        return True


def _checked_size(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """((width, height) after EXIF orientation, None) or (None, problem), from a header read plus PIL `verify`."""
    try:
        if path.stat().st_size == 0:
            return None, "empty file (0 bytes)"
        with Image.open(path) as pil:  # verify() must come first and leaves the object unusable
            pil.verify()
        with Image.open(path) as pil:
            width, height = pil.size
            try:
                orientation = pil.getexif().get(EXIF_ORIENTATION_TAG, 1)
            except Exception:  # a broken EXIF block does not stop io.read_image either
                orientation = 1
    except Exception as exc:  # unidentified format, truncated header, bad CRC, unreadable file
        return None, f"not a readable image ({type(exc).__name__}: {exc})"
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return (width, height), None
