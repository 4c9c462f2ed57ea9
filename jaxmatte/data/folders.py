"""Dataset folders (images + ground truth matched by stem) as random-access sources.

Layouts of a root (split) folder, image folder + ground-truth folder:

- DIS: ``im/`` + ``gt/`` (`DISFolders` reads only this one);
- DINOv3 matting: ``rgb_images/`` + ``alpha_maps/``;
- alphamatting.com style: ``image/`` + ``alpha/``.

`MattingFolders` (and `open_folders`) read these and the original SegTrimap layout ``original/`` + ``mask/`` (the
ground-truth alpha despite the name), and optionally, by stem, trimaps (a ``trimaps/`` or ``trimap/`` folder in the
root, or an explicit `trimap_dir`) and given input masks (`input_mask_dir`, e.g. coarse object masks for SegTrimap).
A source is what grain's `MapDataset.source` takes: picklable, `len()`, `[int]` returning
``{"image": HxWx3 uint8 RGB, "mask": HxW uint8, "name": stem[, "trimap": HxW uint8][, "input_mask": HxW uint8]}``,
files read lazily through `jaxmatte.data.io`.

Bad training data: files that cannot be paired or whose headers cannot be read, and pairs whose sizes differ, are
left out and listed once when the dataset opens (`problems`, one warning). Ground truth needing a conversion is
kept and listed once at INFO (`notes`): 16-bit files are scaled to 8 bits (round(v / 257)); files with an alpha
channel are read as `read_mask` reads them (the alpha channel where the colour is constant, else the luminance).
Files whose pixel data turn out to be unreadable only when read are skipped by the training loop
(`jaxmatte.train.loop.SkippingSource`, one warning per file).
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
    """Image / ground-truth pairs from one or more roots in one of `LAYOUTS`, concatenated in the order given.

    Within a root, pairs are sorted by image file name. `problems` lists ``(path, reason)`` for what was left out:
    images without ground truth, ground truth without image, duplicate stems, and (with `validate`) files whose
    header cannot be read or whose size differs from the partner's. Problems are logged once, never raised.
    A missing root, or one without a layout's folders, raises `FileNotFoundError` naming the path.
    Names are file stems; the same stem in two roots gives two records with the same name.
    """

    LAYOUTS: tuple[tuple[str, str], ...] = (("im", "gt"),)
    TRIMAP_FOLDERS: tuple[str, ...] = ()

    def __init__(
        self,
        roots: Sequence[str | os.PathLike] | str | os.PathLike,
        *,
        validate: bool = True,
        trimap_dir: str | os.PathLike | None = None,
        input_mask_dir: str | os.PathLike | None = None,
    ):
        if (trimap_dir is not None or input_mask_dir is not None) and not self.TRIMAP_FOLDERS:
            raise ValueError(f"{type(self).__name__} reads no trimaps or input masks; use MattingFolders")
        self.input_mask_dir = Path(input_mask_dir) if input_mask_dir is not None else None
        if self.input_mask_dir is not None and not self.input_mask_dir.is_dir():
            raise FileNotFoundError(f"{self.input_mask_dir}: input mask folder does not exist")
        self.trimap_dir = Path(trimap_dir) if trimap_dir is not None else None
        if self.trimap_dir is not None and not self.trimap_dir.is_dir():
            raise FileNotFoundError(f"{self.trimap_dir}: trimap folder does not exist")
        if isinstance(roots, str | os.PathLike):
            roots = [roots]
        self.roots: tuple[Path, ...] = tuple(Path(root) for root in roots)
        if not self.roots:
            raise ValueError("DISFolders needs at least one root folder")
        self.problems: list[tuple[Path, str]] = []
        self.notes: list[tuple[Path, str]] = []
        pairs: list[tuple[str, str, str, str, str]] = []
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
        if self.notes:
            listed = "\n".join(f"  {path}: {reason}" for path, reason in self.notes[:20])
            more = f"\n  ... and {len(self.notes) - 20} more" if len(self.notes) > 20 else ""
            logger.info("%d ground-truth file(s) converted on reading:\n%s%s", len(self.notes), listed, more)

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, gt_path, name, trimap_path, input_mask_path = self._pairs[index]
        record = {"image": read_image(image_path), "mask": read_mask(gt_path), "name": name}
        if trimap_path:
            record["trimap"] = read_mask(trimap_path)
        if input_mask_path:
            record["input_mask"] = read_mask(input_mask_path)
        return record

    def __repr__(self) -> str:
        roots = [str(root) for root in self.roots]
        return f"{type(self).__name__}({roots}, {len(self)} pairs, {len(self.problems)} problems)"

    @property
    def names(self) -> list[str]:
        return [pair[2] for pair in self._pairs]

    def paths(self, index: int) -> tuple[Path, Path]:
        """(image path, ground-truth path) of pair `index`."""
        image_path, gt_path = self._pairs[index][:2]
        return Path(image_path), Path(gt_path)

    def trimap_path(self, index: int) -> Path | None:
        trimap = self._pairs[index][3]
        return Path(trimap) if trimap else None

    def layout(self, root: Path) -> tuple[Path, Path]:
        """(image folder, ground-truth folder) of `root`: the first of `LAYOUTS` present."""
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: dataset root does not exist (or is not a folder)")
        for image_name, gt_name in self.LAYOUTS:
            if (root / image_name).is_dir() and (root / gt_name).is_dir():
                return root / image_name, root / gt_name
        wanted = ", ".join(f"{i}/ + {g}/" for i, g in self.LAYOUTS)
        for image_name, gt_name in self.LAYOUTS:
            present = [(root / n).is_dir() for n in (image_name, gt_name)]
            if any(present):
                missing = root / (gt_name if present[0] else image_name)
                raise FileNotFoundError(f"{missing}: missing; a root holds {wanted}")
        found = sorted(p.name + "/" for p in root.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"{root}: no image / ground-truth folders; a root holds {wanted} (found {', '.join(found) or 'nothing'})"
        )

    def _trimap_folder(self, root: Path) -> Path | None:
        if self.trimap_dir is not None:
            return self.trimap_dir
        return next((root / n for n in self.TRIMAP_FOLDERS if (root / n).is_dir()), None)

    def _pair(self, root: Path, validate: bool) -> list[tuple[str, str, str, str, str]]:
        image_dir, gt_dir = self.layout(root)
        trimap_dir = self._trimap_folder(root)
        trimaps = {path.stem: path for path in list_images(trimap_dir)} if trimap_dir is not None else {}
        mask_dir = self.input_mask_dir
        input_masks = {path.stem: path for path in list_images(mask_dir)} if mask_dir is not None else {}

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
                self.problems.append((path, f"ground truth without an image in {image_dir.name}/"))
        pairs = []
        for stem, image_path in images.items():
            gt_path = masks.get(stem)
            if gt_path is None:
                self.problems.append((image_path, f"image without ground truth in {gt_dir.name}/"))
                continue
            trimap = trimaps.get(stem)
            if trimap_dir is not None and trimap is None:
                self.problems.append((image_path, f"image without a trimap in {trimap_dir}"))
                continue
            input_mask = input_masks.get(stem)
            if mask_dir is not None and input_mask is None:
                self.problems.append((image_path, f"image without an input mask in {mask_dir}"))
                continue
            if validate and not self._valid_pair(image_path, gt_path):
                continue
            pairs.append((str(image_path), str(gt_path), stem, str(trimap or ""), str(input_mask or "")))
        return pairs

    def _valid_pair(self, image_path: Path, gt_path: Path) -> bool:
        sizes, kinds = [], []
        for path in (image_path, gt_path):
            size, problem, kind = _checked_header(path)
            if problem is not None:
                self.problems.append((path, problem))
                return False
            sizes.append(size)
            kinds.append(kind)
        if sizes[0] != sizes[1]:
            (iw, ih), (gw, gh) = sizes
            self.problems.append((image_path, f"image is {iw}x{ih} but its ground truth {gt_path.name} is {gw}x{gh}"))
            return False
        if kinds[1] == "deep":
            self.notes.append((gt_path, "more than 8 bits per channel, scaled to 8 bits"))
        elif kinds[1] == "alpha":
            self.notes.append((gt_path, "has an alpha channel, used where the colour is constant (else the luminance)"))
        return True


class MattingFolders(DISFolders):
    """`DISFolders` for every layout of the module docstring, with trimaps (``trimaps/`` / ``trimap/`` in the root,
    or `trimap_dir`): an image without its trimap is then listed as a problem and left out."""

    LAYOUTS = (("im", "gt"), ("rgb_images", "alpha_maps"), ("image", "alpha"), ("original", "mask"))
    TRIMAP_FOLDERS = ("trimaps", "trimap")


def open_folders(
    roots: Sequence[str | os.PathLike] | str | os.PathLike,
    *,
    validate: bool = True,
    trimap_dir: str | os.PathLike | None = None,
    input_mask_dir: str | os.PathLike | None = None,
) -> MattingFolders:
    """The dataset of `roots` in any supported layout (`MattingFolders`)."""
    return MattingFolders(roots, validate=validate, trimap_dir=trimap_dir, input_mask_dir=input_mask_dir)


def _checked_size(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """((width, height) after EXIF orientation, None) or (None, problem), from a header read plus PIL `verify`."""
    size, problem, _ = _checked_header(path)
    return size, problem


def _checked_header(path: Path) -> tuple[tuple[int, int] | None, str | None, str]:
    """`_checked_size` and the file's kind: "deep" (more than 8 bits per channel), "alpha" (an alpha channel) or
    ""."""
    try:
        if path.stat().st_size == 0:
            return None, "empty file (0 bytes)", ""
        with Image.open(path) as pil:  # verify() must come first and leaves the object unusable
            pil.verify()
        with Image.open(path) as pil:
            width, height = pil.size
            kind = _kind(pil)
            try:
                orientation = pil.getexif().get(EXIF_ORIENTATION_TAG, 1)
            except Exception:  # a broken EXIF block does not stop io.read_image either
                orientation = 1
    except Exception as exc:  # unidentified format, truncated header, bad CRC, unreadable file
        return None, f"not a readable image ({type(exc).__name__}: {exc})", ""
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return (width, height), None, kind


def _kind(pil: Image.Image) -> str:
    """ "deep", "alpha" or "" from an opened (not loaded) file's mode and tiles."""
    if pil.mode in ("I", "F") or pil.mode.startswith("I;16"):
        return "deep"
    try:
        raw = [tile[3] if isinstance(tile[3], str) else (tile[3] or ("",))[0] for tile in pil.tile]
    except Exception:  # tile layout of an unusual plugin: judge by the mode only
        raw = []
    if any(isinstance(mode, str) and ";16" in mode for mode in raw):
        return "deep"
    if pil.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (pil.mode == "P" and "transparency" in pil.info):
        return "alpha"
    return ""
