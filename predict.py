"""Predict alpha mattes (or trimaps) with a saved model.

    python predict.py INPUT [INPUT ...] --checkpoint DIR --output OUT [--format alpha,rgba,composite]
        [--background R,G,B] [--precision fp32|bf16] [--batch-size N] [--recursive]
        [--resize stretch|letterbox] [--input-size S] [--quantization round|truncate] [--high-res [--tile N]]
    python predict.py INPUT ... --checkpoint SEGTRIMAP_DIR --mask-dir MASKS --output OUT [--format trimap,overlay]
    python predict.py INPUT ... --checkpoint DIM_DIR --trimap-dir TRIMAPS --output OUT
    python predict.py INPUT ... --checkpoint DIM_DIR --trimap-model SEGTRIMAP_DIR --mask-dir MASKS --output OUT
        [--save-trimaps DIR]
    python predict.py CLIP.mp4 [IMAGES ...] --checkpoint DIR --output OUT [--format alpha,rgba,composite]
        [--video-output video|frames] [--foreground estimate|none]

INPUT: an image file, a folder (its images; with `--recursive` also those in subfolders, whose relative paths are kept
under OUT), or a glob pattern (quote it). `--checkpoint`: a converted directory (`port/convert.py`) or a training
workdir (its best/, else last/ checkpoint). The geometry and quantisation recorded in the checkpoint are used unless
overridden. Outputs per image: `<stem>.png` (alpha), `<stem>_rgba.png` (the image with the alpha as its alpha
channel), `<stem>_composite.png` (the image over `--background`), each at the image's original size.
The colours of `_rgba` and `_composite` are the estimated foreground (`jaxmatte.foreground`: the old background's
colour removed from semi-transparent pixels such as hair); `--foreground none` keeps the image's own colours.
Video files (.mp4, .mov, .mkv, .webm, .avi; named as files or glob matches, not taken from folders; PyAV needed) are
read as streams of frames in batches and written at their frame rate as `<stem>_alpha.mkv` (lossless grayscale FFV1),
`<stem>_rgba.mov` (QuickTime Animation with alpha) and `<stem>_composite.mp4` (H.264), or with `--video-output frames`
as PNG sequences `<stem>/alpha/000000.png`, `<stem>/rgba/...`, `<stem>/composite/...` (`jaxmatte.data.video`).
`--high-res` (TSR-Matte): the coarse stage runs at the checkpoint's input size as usual, the refiner at the photo's
full resolution in overlapping `--tile` x `--tile` windows blended without seams (`jaxmatte.highres`); models
without a separate refine stage refuse it.
Trimap models (SegTrimap) read each image's coarse object mask from `--mask-dir`, matched by stem (any image format;
0 / 1 masks as is, others binarised at >= 30; a mask of another size is resized with nearest neighbour) and write
`<stem>.png` (the trimap: 0 background, 128 unknown, 255 foreground) and `<stem>_overlay.png` (the class colours over
the image), at the image's original size. An image without a mask is reported and skipped.
Trimap-based matting models (DIM and its pruned students) read each image's trimap from `--trimap-dir` (matched the
same way; 0 background, 128 unknown, 255 foreground), run on the whole image at its own resolution and force the
known regions; or, with `--trimap-model`, get the trimap from a SegTrimap model and the images' `--mask-dir` masks
(the trimaps are also written to `--save-trimaps`).

Bad inputs never end the run: every image that is not written gets one line on stderr, `skipped FILE: PROBLEM`
(unreadable or truncated data, above the pixel limit, a broken symbolic link, no mask / trimap, an output file that
cannot be written, an output name already written from another input: among files that share an output name, the
first readable one in sorted order is written and the others are reported as name clashes), and the run ends with
`wrote N of M images to OUT; skipped K: ...` on stdout. Images above `--max-pixels` (default `$JAXMATTE_MAX_PIXELS`
or 100 Mpx) are refused from their header, before decoding. Images are read one batch ahead of the model, so memory
holds at most two batches of decoded images.

Exit status: 0 every image was written; 1 some were skipped (at least one was written); 2 nothing was written, or a
usage error found before the model loads (bad options, an input that names no file, folder or glob match, a folder
without images, an `--output` / `--save-trimaps` that is a file or cannot be created or written).
"""

from __future__ import annotations

import argparse
import glob
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jaxmatte.cli import (
    DeviceError,
    add_high_res_arguments,
    add_max_pixels_argument,
    add_predictor_arguments,
    apply_max_pixels,
    configure_logging,
    count_kinds,
    exit_status,
    high_res_problem,
    make_predictor,
    output_problem,
    select_device,
)
from jaxmatte.data import video as video_io
from jaxmatte.data.io import IMAGE_SUFFIXES, ImageReadError, list_images, scan_images, write_png
from jaxmatte.data.video import VIDEO_SUFFIXES, is_video

FORMATS = ("alpha", "rgba", "composite", "trimap", "overlay")
KIND_FORMATS = {"alpha": ("alpha", "rgba", "composite"), "trimap": ("trimap", "overlay")}
SUFFIXES = {"alpha": "", "rgba": "_rgba", "composite": "_composite", "trimap": "", "overlay": "_overlay"}
EXAMPLES = """examples:
  python predict.py photos/ --checkpoint ckpt/tsr_base --output out/
  python predict.py portrait.jpg --checkpoint ckpt/tsr_base --output out/ --format rgba,composite --foreground none
  python predict.py clip.mp4 --checkpoint ckpt/tsr_base --output out/ --format alpha,rgba,composite --batch-size 4
  python predict.py "takes/*.mov" --checkpoint ckpt/tsr_base --output out/ --video-output frames
  python predict.py "shots/*.jpg" --checkpoint runs/tsr --output out/ --format alpha,rgba,composite
  python predict.py dataset/ --recursive --checkpoint runs/tsr --output out/ --batch-size 8 --precision bf16
  python predict.py photos_4k/ --checkpoint ckpt/tsr_base --output out/ --high-res --tile 1024 --format alpha,rgba
  python predict.py images/ --checkpoint ckpt/segtrimap --mask-dir masks/ --output trimaps/ --format trimap,overlay
  python predict.py images/ --checkpoint ckpt/dim_pruned --trimap-dir trimaps/ --output alphas/ --max-pixels 50M

exit status: 0 all images written; 1 some skipped (each named on stderr), at least one written; 2 nothing written
or a usage error (before the model loads)"""


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
    parser = argparse.ArgumentParser(
        description="Predict alpha mattes (or trimaps) with a saved model.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("inputs", nargs="+", help="image or video files, folders (of images) or glob patterns")
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
    parser.add_argument(
        "--foreground",
        choices=("estimate", "none"),
        default="estimate",
        help="colours of rgba / composite outputs: the estimated foreground (default) or the image's own",
    )
    parser.add_argument(
        "--video-output",
        choices=("video", "frames"),
        default="video",
        help="video inputs: write videos (default) or PNG sequences, one folder per format",
    )
    add_high_res_arguments(parser)
    add_predictor_arguments(parser)
    add_max_pixels_argument(parser)
    return parser


def collect_inputs(
    inputs: Sequence[str], recursive: bool
) -> tuple[list[tuple[Path, Path]], list[ImageReadError], list[str]]:
    """((file, output path without suffix, relative to the output folder) in order, files found but unusable (broken
    links), errors: inputs that name nothing).

    Folder inputs keep their images' relative subfolders; files and glob matches are written flat. The same file
    named twice is taken once; different files with one output name are all kept (the first readable one is
    written, see `main`).
    """
    found: list[tuple[Path, Path]] = []
    unusable: list[ImageReadError] = []
    errors: list[str] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            files, links = scan_images(path, recursive=recursive)
            if not files and not links:
                hint = "" if recursive else " (--recursive reads its subfolders)"
                errors.append(f"{path}: no images in this folder{hint}")
            found.extend((file, file.relative_to(path).with_suffix("")) for file in files)
            unusable.extend(links)
        elif path.is_file():
            found.append((path, Path(path.stem)))
        else:
            matches = sorted(Path(match) for match in glob.glob(text, recursive=recursive))
            wanted = (*IMAGE_SUFFIXES, *VIDEO_SUFFIXES)
            images = [match for match in matches if match.suffix.lower() in wanted and not match.is_dir()]
            files = [match for match in images if match.is_file()]
            links = [link for link in images if link not in files]
            unusable.extend(ImageReadError(link, "broken or looping symbolic link", "broken link") for link in links)
            if not images:
                errors.append(f"{text}: no such file or folder, and no image matches it as a pattern")
            found.extend((file, Path(file.stem)) for file in files)
    unique: list[tuple[Path, Path]] = []
    seen: set[Path] = set()
    for file, stem in found:
        if file.resolve() not in seen:
            seen.add(file.resolve())
            unique.append((file, stem))
    return unique, unusable, errors


def composite(image: np.ndarray, alpha: np.ndarray, background: Sequence[int]) -> np.ndarray:
    """uint8 RGB: image x a + background x (1 - a), a = alpha / 255, rounded."""
    weight = alpha.astype(np.float32)[..., None] / np.float32(255.0)
    back = np.asarray(background, dtype=np.float32)
    blended = image.astype(np.float32) * weight + back * (np.float32(1.0) - weight)
    return np.clip(np.floor(blended + 0.5), 0, 255).astype(np.uint8)


def output_files(folder: Path, stem: Path, chosen: Sequence[str]) -> list[Path]:
    """The files `write_outputs` writes for one image."""
    return [folder / stem.parent / f"{stem.name}{SUFFIXES[name]}.png" for name in chosen]


def write_outputs(
    folder: Path, stem: Path, result: np.ndarray, image: np.ndarray, chosen: Sequence[str], background: Sequence[int]
) -> list[Path]:
    """Write `result` (an alpha matte, or trimap class ids) in each chosen format; returns the files."""
    from jaxmatte import outputs

    written = []
    for name, target in zip(chosen, output_files(folder, stem, chosen), strict=True):
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
) -> tuple[list[tuple[Path, Path, Path]], list[ImageReadError]]:
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
            problems.append(ImageReadError(file, f"no {what} named {file.stem}.* in {mask_dir}", f"no {what}"))
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


class Skips:
    """The images that were not written: one `skipped FILE: PROBLEM` line each on stderr, as they happen."""

    def __init__(self) -> None:
        self.kinds: list[str] = []

    def add(self, path: Path, problem: str, kind: str) -> None:
        self.kinds.append(kind)
        tqdm.write(f"skipped {path}: {problem}", file=sys.stderr)

    def add_error(self, error: ImageReadError, image: Path | None = None, companion: str = "mask") -> None:
        """An `ImageReadError` of the image, or of its `companion` file (mask, trimap) when `image` differs."""
        if image is None or error.path == image:
            self.add(error.path, error.problem, error.kind)
        else:
            self.add(image, f"{companion} {error.path}: {error.problem}", f"{error.kind} {companion}")


def write_videos(
    videos: Sequence[tuple[Path, Path]], predictor, chosen: Sequence[str], args: argparse.Namespace, skips: Skips
) -> int:
    """Matte each video (`jaxmatte.video.matte_video`) into `args.output`; returns how many were written. A video
    that cannot be read, decoded or written, or that the model cannot take, is a skipped line."""
    from jaxmatte.video import matte_video, unsupported

    problem, written = unsupported(predictor), 0
    owners: dict[Path, Path] = {}  # output file or folder -> the video it was written from
    for path, stem in videos:
        if problem is not None:
            skips.add(path, problem, "unsupported")
            continue
        targets = video_io.targets(args.output, stem, chosen, args.video_output)
        taken = next((target for target in targets if target in owners), None)
        if taken is not None:
            skips.add(path, f"name clash: {taken} is already written from {owners[taken]}", "name clash")
            continue
        bar = tqdm(desc=path.name, unit="frame", file=sys.stderr, disable=None, leave=False)
        try:
            options = {"background": args.background, "foreground": args.foreground, "mode": args.video_output}
            matte_video(predictor, path, args.output, stem, chosen, **options, progress=bar)
        except ImageReadError as error:
            skips.add_error(error, path)
            continue
        except OSError as exc:
            skips.add(path, f"cannot write {exc.filename or args.output} ({exc.strerror or exc})", "output blocked")
            continue
        finally:
            bar.close()
        owners.update(dict.fromkeys(targets, path))
        written += 1
    return written


def usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        apply_max_pixels(args)
    except ValueError as exc:
        return usage_error(str(exc))
    for option, folder in (("--output", args.output), ("--save-trimaps", args.save_trimaps)):
        problem = output_problem(folder, option, folder=True) if folder is not None else None
        if problem:
            return usage_error(problem)
    items, unusable, errors = collect_inputs(args.inputs, args.recursive)
    if errors:
        for error in errors[:-1]:
            print(f"error: {error}", file=sys.stderr)
        return usage_error(errors[-1])
    if not items:
        for link in unusable:
            print(f"skipped {link.path}: {link.problem}", file=sys.stderr)
        return usage_error("no readable input images")
    videos = [item for item in items if is_video(item[0])]
    items = [item for item in items if not is_video(item[0])]
    if videos and not video_io.available():
        return usage_error(video_io.INSTALL_HINT)

    for option, folder in (("--mask-dir", args.mask_dir), ("--trimap-dir", args.trimap_dir)):
        if folder is not None and not folder.is_dir():
            return usage_error(f"{folder}: {option} folder not found")
    if args.save_trimaps is not None and args.trimap_model is None:
        return usage_error("--save-trimaps needs --trimap-model")
    if high_res_problem(args):
        return usage_error(high_res_problem(args))
    try:
        print(select_device(args.device))  # JAX starts here, after the arguments are checked
        predictor = make_predictor(args)
        trimap_predictor = None
        if args.trimap_model is not None:
            trimap_predictor = make_predictor(argparse.Namespace(**{**vars(args), "checkpoint": args.trimap_model}))
            check_chain(predictor, trimap_predictor)
    except (DeviceError, FileNotFoundError, ValueError) as exc:
        return usage_error(str(exc))
    allowed = KIND_FORMATS[predictor.output]
    chosen = args.format or allowed[:1]
    wrong = [name for name in chosen if name not in allowed]
    if wrong:
        return usage_error(f"a {predictor.output} model writes {', '.join(allowed)}, not {', '.join(wrong)}")
    reader = trimap_predictor or predictor
    total = len(items) + len(videos) + len(unusable)
    skips = Skips()
    companions = None
    what = "mask"
    unmatched: list[ImageReadError] = []
    if reader.companion is not None:
        option, folder, what = (
            ("--mask-dir", args.mask_dir, "mask") if reader.needs_mask else ("--trimap-dir", args.trimap_dir, "trimap")
        )
        if folder is None:
            hint = " (or --trimap-model SEGTRIMAP_DIR with --mask-dir)" if predictor.needs_trimap else ""
            return usage_error(f"{predictor.family} predicts from an image and its {what}: give {option}{hint}")
        matched, unmatched = match_masks(items, folder, what)
        items = [(file, stem) for file, stem, _ in matched]
        companions = [mask for _, _, mask in matched]
    for option, folder in (("--mask-dir", args.mask_dir), ("--trimap-dir", args.trimap_dir)):
        used = (option == "--mask-dir" and reader.needs_mask) or (option == "--trimap-dir" and reader.needs_trimap)
        if folder is not None and not used:
            print(f"warning: {reader.family} does not read {option}; it is ignored", file=sys.stderr)
    pre = predictor.preprocessing
    geometry = f"{pre.policy.size}x{pre.policy.size}" if pre.policy.fixed_shape else f"pad to {pre.policy.size}"
    chain = f" <- trimaps of {trimap_predictor.directory}" if trimap_predictor is not None else ""
    if predictor.high_res is not None:
        geometry += f" + full-resolution refiner in {predictor.high_res.tile} px tiles"
    print(
        f"{predictor.directory} ({predictor.family}){chain}: {pre.policy.kind} {geometry}, {pre.quantization}, "
        f"{args.precision}, batch {args.batch_size}; {total} {'files' if videos else 'images'} -> {args.output}"
    )
    for error in [*unusable, *unmatched]:
        skips.add_error(error)

    written = 0
    if items:
        stems = {file: stem for file, stem in items}
        files = [file for file, _ in items]
        estimate = args.foreground == "estimate" and any(name in chosen for name in ("rgba", "composite"))
        floats = estimate and trimap_predictor is None  # float alphas where the model gives them
        if estimate:
            from jaxmatte.foreground import default_backend, foreground_uint8
            from jaxmatte.predict import quantize
        if trimap_predictor is None:
            results = predictor.predict_files(files, with_images=True, masks=companions, floats=floats)
        else:
            from jaxmatte.chain import TrimapToAlpha

            results = TrimapToAlpha(trimap_predictor, predictor).predict_files(files, masks=companions)
        owners: dict[Path, Path] = {}  # output file -> the input it was written from
        bar = tqdm(results, total=len(items), desc="predicting", unit="img", file=sys.stderr, disable=None)
        for path, result, image, *trimap in bar:  # lazily: one batch of decoded images ahead of the writing
            if isinstance(result, ImageReadError):
                skips.add_error(result, path, what)
                continue
            targets = output_files(args.output, stems[path], chosen)
            taken = next((target for target in targets if target in owners), None)
            if taken is not None:
                skips.add(path, f"name clash: {taken} is already written from {owners[taken]}", "name clash")
                continue
            colours = image
            if estimate:
                colours = foreground_uint8(image, result, backend=default_backend())
                result = quantize(result, predictor.preprocessing.quantization) if floats else result
            try:
                write_outputs(args.output, stems[path], result, colours, chosen, args.background)
                if trimap and args.save_trimaps is not None:
                    write_outputs(args.save_trimaps, stems[path], trimap[0], image, ("trimap",), args.background)
            except OSError as exc:
                where = exc.filename or args.output / stems[path]
                skips.add(path, f"cannot write {where} ({exc.strerror or exc})", "output blocked")
                continue
            owners.update(dict.fromkeys(targets, path))
            written += 1
    written += write_videos(videos, predictor, chosen, args, skips)

    summary = f"wrote {written} of {total} {'files' if videos else 'images'} to {args.output}"
    if skips.kinds:
        summary += f"; skipped {len(skips.kinds)}: {count_kinds(skips.kinds)}"
    print(summary)
    return exit_status(written, len(skips.kinds))


if __name__ == "__main__":
    sys.exit(main())
