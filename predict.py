"""Predict alpha mattes (or trimaps) with a saved model.

    python predict.py INPUT [INPUT ...] --checkpoint DIR --output OUT [--format alpha,rgba,composite]
        [--background R,G,B] [--precision fp32|bf16] [--batch-size N] [--recursive]
        [--resize stretch|letterbox] [--input-size S] [--quantization round|truncate]
    python predict.py INPUT ... --checkpoint SEGTRIMAP_DIR --mask-dir MASKS --output OUT [--format trimap,overlay]
    python predict.py INPUT ... --checkpoint DIM_DIR --trimap-dir TRIMAPS --output OUT
    python predict.py INPUT ... --checkpoint DIM_DIR --trimap-model SEGTRIMAP_DIR --mask-dir MASKS --output OUT
        [--save-trimaps DIR]

INPUT: an image file, a folder (its images; with `--recursive` also those in subfolders, whose relative paths are kept
under OUT), or a glob pattern (quote it). `--checkpoint`: a converted directory (`port/convert.py`) or a training
workdir (its best/, else last/ checkpoint). The geometry and quantisation recorded in the checkpoint are used unless
overridden. Outputs per image: `<stem>.png` (alpha), `<stem>_rgba.png` (the image with the alpha as its alpha
channel), `<stem>_composite.png` (the image over `--background`), each at the image's original size.
Trimap models (SegTrimap) read each image's coarse object mask from `--mask-dir`, matched by stem (any image format;
0 / 1 masks as is, others binarised at >= 30; a mask of another size is resized with nearest neighbour) and write
`<stem>.png` (the trimap: 0 background, 128 unknown, 255 foreground) and `<stem>_overlay.png` (the class colours over
the image), at the image's original size. An image without a mask is reported and skipped.
Trimap-based matting models (DIM and its pruned students) read each image's trimap from `--trimap-dir` (matched the
same way; 0 background, 128 unknown, 255 foreground), run on the whole image at its own resolution and force the
known regions; or, with `--trimap-model`, get the trimap from a SegTrimap model and the images' `--mask-dir` masks
(the trimaps are also written to `--save-trimaps`).
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
    parser.add_argument("--trimap-dir", type=Path, help="trimaps by image stem (trimap-based models, e.g. DIM)")
    parser.add_argument(
        "--trimap-model", type=Path, help="a SegTrimap directory making the trimaps of a DIM model from --mask-dir"
    )
    parser.add_argument("--save-trimaps", type=Path, help="with --trimap-model: also write the trimaps here")
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


def match_masks(
    items: Sequence[tuple[Path, Path]], mask_dir: Path, what: str = "mask"
) -> tuple[list[tuple[Path, Path, Path]], list[str]]:
    """((image, output stem, mask) for the images that have a mask (or trimap: `what`) in `mask_dir`, problems for
    those that do not). A mask is found by the image's relative output path (recursive inputs), else by its stem."""
    masks = list_images(mask_dir, recursive=True)
    by_relative = {mask.relative_to(mask_dir).with_suffix(""): mask for mask in masks}
    by_stem: dict[str, Path] = {}
    for mask in masks:
        by_stem.setdefault(mask.stem, mask)
    matched, problems = [], []
    for file, stem in items:
        mask = by_relative.get(stem) or by_stem.get(file.stem)
        if mask is None:
            problems.append(f"{file}: skipped, no {what} named {file.stem}.* in {mask_dir}")
            continue
        matched.append((file, stem, mask))
    return matched, problems


def check_chain(alpha_predictor, trimap_predictor) -> None:
    """A `--trimap-model` chain needs a trimap-based matting model and a trimap model."""
    if not alpha_predictor.needs_trimap:
        raise ValueError(f"--trimap-model feeds trimap-based matting models; {alpha_predictor.family} reads none")
    if trimap_predictor.output != "trimap":
        raise ValueError(
            f"{trimap_predictor.directory}: --trimap-model needs a trimap model, not {trimap_predictor.family}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    items, problems = collect_inputs(args.inputs, args.recursive)
    if not items:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        print("error: no input images", file=sys.stderr)
        return 2

    for option, folder in (("--mask-dir", args.mask_dir), ("--trimap-dir", args.trimap_dir)):
        if folder is not None and not folder.is_dir():
            print(f"error: {folder}: {option} folder not found", file=sys.stderr)
            return 2
    if args.save_trimaps is not None and args.trimap_model is None:
        print("error: --save-trimaps needs --trimap-model", file=sys.stderr)
        return 2
    try:
        predictor = make_predictor(args)  # JAX starts here, after the arguments are checked
        trimap_predictor = None
        if args.trimap_model is not None:
            trimap_predictor = make_predictor(argparse.Namespace(**{**vars(args), "checkpoint": args.trimap_model}))
            check_chain(predictor, trimap_predictor)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    allowed = KIND_FORMATS[predictor.output]
    chosen = args.format or allowed[:1]
    wrong = [name for name in chosen if name not in allowed]
    if wrong:
        print(f"error: a {predictor.output} model writes {', '.join(allowed)}, not {', '.join(wrong)}", file=sys.stderr)
        return 2
    reader = trimap_predictor or predictor
    companions = None
    if reader.companion is not None:
        option, folder, what = (
            ("--mask-dir", args.mask_dir, "mask") if reader.needs_mask else ("--trimap-dir", args.trimap_dir, "trimap")
        )
        if folder is None:
            hint = " (or --trimap-model SEGTRIMAP_DIR with --mask-dir)" if predictor.needs_trimap else ""
            print(
                f"error: {predictor.family} predicts from an image and its {what}: give {option}{hint}", file=sys.stderr
            )
            return 2
        matched, missing = match_masks(items, folder, what)
        problems.extend(missing)
        items = [(file, stem) for file, stem, _ in matched]
        companions = [mask for _, _, mask in matched]
        if not items:
            for problem in problems[:SHOWN_PROBLEMS]:
                print(f"error: {problem}", file=sys.stderr)
            print(f"error: no image has a {what}", file=sys.stderr)
            return 2
    for option, folder in (("--mask-dir", args.mask_dir), ("--trimap-dir", args.trimap_dir)):
        used = (option == "--mask-dir" and reader.needs_mask) or (option == "--trimap-dir" and reader.needs_trimap)
        if folder is not None and not used:
            print(f"warning: {reader.family} does not read {option}; it is ignored", file=sys.stderr)
    pre = predictor.preprocessing
    geometry = f"{pre.policy.size}x{pre.policy.size}" if pre.policy.fixed_shape else f"pad to {pre.policy.size}"
    chain = f" <- trimaps of {trimap_predictor.directory}" if trimap_predictor is not None else ""
    print(
        f"{predictor.directory} ({predictor.family}){chain}: {pre.policy.kind} {geometry}, {pre.quantization}, "
        f"{args.precision}, batch {args.batch_size}; {len(items)} images -> {args.output}"
    )

    stems = {file: stem for file, stem in items}
    written = 0
    files = [file for file, _ in items]
    if trimap_predictor is None:
        results = predictor.predict_files(files, with_images=True, masks=companions)
    else:
        from jaxmatte.chain import TrimapToAlpha

        results = TrimapToAlpha(trimap_predictor, predictor).predict_files(files, masks=companions)
    for path, result, image, *trimap in tqdm(results, total=len(items), desc="predicting", unit="img", file=sys.stderr):
        if isinstance(result, ImageReadError):
            problems.append(f"{result.path}: {result.problem}")
            continue
        write_outputs(args.output, stems[path], result, image, chosen, args.background)
        if trimap and args.save_trimaps is not None:
            write_outputs(args.save_trimaps, stems[path], trimap[0], image, ("trimap",), args.background)
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
