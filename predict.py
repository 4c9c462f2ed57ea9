"""Predict alpha mattes (or trimaps) with a saved model.

    python predict.py INPUT [INPUT ...] --checkpoint DIR --output OUT [--format alpha,rgba,composite]
        [--background R,G,B] [--precision fp32|bf16] [--batch-size N] [--recursive]
        [--resize stretch|letterbox] [--input-size S] [--quantization round|truncate]
    python predict.py INPUT ... --checkpoint SEGTRIMAP_DIR --mask-dir MASKS --output OUT [--format trimap,overlay]

INPUT: an image file, a folder (its images; with `--recursive` also those in subfolders, whose relative paths are kept
under OUT), or a glob pattern (quote it). `--checkpoint`: a converted directory (`port/convert.py`) or a training
workdir (its best/, else last/ checkpoint). The geometry and quantisation recorded in the checkpoint are used unless
overridden. Outputs per image: `<stem>.png` (alpha), `<stem>_rgba.png` (the image with the alpha as its alpha
channel), `<stem>_composite.png` (the image over `--background`), each at the image's original size.
Trimap models (SegTrimap) read each image's coarse object mask from `--mask-dir`, matched by stem (any image format;
0 / 1 masks as is, others binarised at >= 30; a mask of another size is resized with nearest neighbour) and write
`<stem>.png` (the trimap: 0 background, 128 unknown, 255 foreground) and `<stem>_overlay.png` (the class colours over
the image), at the image's original size. An image without a mask is reported and skipped.
Unreadable files are reported and skipped. Exit status: 0 when at least one image was written, 2 otherwise.
"""

from __future__ import annotations

import argparse
import glob
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jaxmatte.cli import add_predictor_arguments, make_predictor
from jaxmatte.data.io import IMAGE_SUFFIXES, ImageReadError, list_images, write_png

FORMATS = ("alpha", "rgba", "composite", "trimap", "overlay")
KIND_FORMATS = {"alpha": ("alpha", "rgba", "composite"), "trimap": ("trimap", "overlay")}
SUFFIXES = {"alpha": "", "rgba": "_rgba", "composite": "_composite", "trimap": "", "overlay": "_overlay"}
SHOWN_PROBLEMS = 50


def formats(text: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in chosen if name not in FORMATS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"formats are a comma-separated subset of {', '.join(FORMATS)}; got {text!r}")
    return chosen


def colour(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    try:
        values = tuple(int(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 <= value <= 255 for value in values):
        raise argparse.ArgumentTypeError(f"expected R,G,B with values 0..255, got {text!r}")
    return values  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Predict alpha mattes (or trimaps) with a saved model.")
    parser.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--checkpoint", type=Path, required=True, help="converted directory or training workdir")
    parser.add_argument("--output", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--format",
        type=formats,
        default=None,
        help="comma-separated outputs: alpha, rgba, composite for matting models (default alpha); trimap, overlay "
        "for trimap models (default trimap)",
    )
    parser.add_argument(
        "--mask-dir", type=Path, help="object masks by image stem (models that read one, e.g. SegTrimap)"
    )
    parser.add_argument(
        "--background", type=colour, default=(255, 255, 255), help="composite background R,G,B (default: 255,255,255)"
    )
    parser.add_argument("--recursive", action="store_true", help="also read the subfolders of folder inputs")
    add_predictor_arguments(parser)
    return parser


def collect_inputs(inputs: Sequence[str], recursive: bool) -> tuple[list[tuple[Path, Path]], list[str]]:
    """((file, output path without suffix, relative to the output folder) in order, problems).

    Folder inputs keep their images' relative subfolders; files and glob matches are written flat. A file whose
    output name is already taken by an earlier input is reported, not predicted.
    """
    found: list[tuple[Path, Path]] = []
    problems: list[str] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            files = list_images(path, recursive=recursive)
            if not files:
                problems.append(f"{path}: no images in this folder")
            found.extend((file, file.relative_to(path).with_suffix("")) for file in files)
        elif path.is_file():
            found.append((path, Path(path.stem)))
        else:
            matches = sorted(Path(match) for match in glob.glob(text, recursive=recursive))
            files = [match for match in matches if match.is_file() and match.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                problems.append(f"{text}: no such file or folder, and no image matches it as a pattern")
            found.extend((file, Path(file.stem)) for file in files)
    unique: list[tuple[Path, Path]] = []
    taken: dict[Path, Path] = {}
    for file, stem in found:
        if stem in taken:
            if taken[stem].resolve() != file.resolve():
                problems.append(f"{file}: skipped, its output name {stem}.png is already used by {taken[stem]}")
            continue
        taken[stem] = file
        unique.append((file, stem))
    return unique, problems


def composite(image: np.ndarray, alpha: np.ndarray, background: Sequence[int]) -> np.ndarray:
    """uint8 RGB: image x a + background x (1 - a), a = alpha / 255, rounded."""
    weight = alpha.astype(np.float32)[..., None] / np.float32(255.0)
    back = np.asarray(background, dtype=np.float32)
    blended = image.astype(np.float32) * weight + back * (np.float32(1.0) - weight)
    return np.clip(np.floor(blended + 0.5), 0, 255).astype(np.uint8)


def write_outputs(
    folder: Path, stem: Path, result: np.ndarray, image: np.ndarray, chosen: Sequence[str], background: Sequence[int]
) -> list[Path]:
    """Write `result` (an alpha matte, or trimap class ids) in each chosen format; returns the files."""
    from jaxmatte import outputs

    written = []
    for name in chosen:
        target = folder / stem.parent / f"{stem.name}{SUFFIXES[name]}.png"
        if name == "alpha":
            data = result
        elif name == "rgba":
            data = np.concatenate([image, result[..., None]], axis=2)
        elif name == "composite":
            data = composite(image, result, background)
        elif name == "trimap":
            data = outputs.to_png("trimap", result)
        else:
            data = outputs.overlay(image, result)
        written.append(write_png(target, data))
    return written


def match_masks(items: Sequence[tuple[Path, Path]], mask_dir: Path) -> tuple[list[tuple[Path, Path, Path]], list[str]]:
    """((image, output stem, mask) for the images that have a mask in `mask_dir`, problems for those that do not).

    A mask is found by the image's relative output path (recursive inputs), else by its file stem."""
    masks = list_images(mask_dir, recursive=True)
    by_relative = {mask.relative_to(mask_dir).with_suffix(""): mask for mask in masks}
    by_stem: dict[str, Path] = {}
    for mask in masks:
        by_stem.setdefault(mask.stem, mask)
    matched, problems = [], []
    for file, stem in items:
        mask = by_relative.get(stem) or by_stem.get(file.stem)
        if mask is None:
            problems.append(f"{file}: skipped, no mask named {file.stem}.* in {mask_dir}")
            continue
        matched.append((file, stem, mask))
    return matched, problems


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    items, problems = collect_inputs(args.inputs, args.recursive)
    if not items:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        print("error: no input images", file=sys.stderr)
        return 2

    if args.mask_dir is not None and not args.mask_dir.is_dir():
        print(f"error: {args.mask_dir}: mask folder not found", file=sys.stderr)
        return 2
    try:
        predictor = make_predictor(args)  # JAX starts here, after the arguments are checked
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    allowed = KIND_FORMATS[predictor.output]
    chosen = args.format or allowed[:1]
    wrong = [name for name in chosen if name not in allowed]
    if wrong:
        print(f"error: a {predictor.output} model writes {', '.join(allowed)}, not {', '.join(wrong)}", file=sys.stderr)
        return 2
    masks = None
    if predictor.needs_mask:
        if args.mask_dir is None:
            print(
                f"error: {predictor.family} predicts from an image and its object mask: give --mask-dir",
                file=sys.stderr,
            )
            return 2
        matched, missing = match_masks(items, args.mask_dir)
        problems.extend(missing)
        items = [(file, stem) for file, stem, _ in matched]
        masks = [mask for _, _, mask in matched]
        if not items:
            for problem in problems[:SHOWN_PROBLEMS]:
                print(f"error: {problem}", file=sys.stderr)
            print("error: no image has a mask", file=sys.stderr)
            return 2
    elif args.mask_dir is not None:
        print(f"warning: {predictor.family} reads no masks; --mask-dir is ignored", file=sys.stderr)
    pre = predictor.preprocessing
    print(
        f"{predictor.directory} ({predictor.family}): {pre.policy.kind} {pre.policy.size}x{pre.policy.size}, "
        f"{pre.quantization}, {args.precision}, batch {args.batch_size}; {len(items)} images -> {args.output}"
    )

    stems = {file: stem for file, stem in items}
    written = 0
    results = predictor.predict_files([file for file, _ in items], with_images=True, masks=masks)
    for path, result, image in tqdm(results, total=len(items), desc="predicting", unit="img", file=sys.stderr):
        if isinstance(result, ImageReadError):
            problems.append(f"{result.path}: {result.problem}")
            continue
        write_outputs(args.output, stems[path], result, image, chosen, args.background)
        written += 1

    print(f"wrote {written} of {len(items)} images to {args.output}")
    if problems:
        print(f"skipped ({len(problems)}):", file=sys.stderr)
        for problem in problems[:SHOWN_PROBLEMS]:
            print(f"  {problem}", file=sys.stderr)
        if len(problems) > SHOWN_PROBLEMS:
            print(f"  ... and {len(problems) - SHOWN_PROBLEMS} more", file=sys.stderr)
    return 0 if written else 2


if __name__ == "__main__":
    sys.exit(main())
