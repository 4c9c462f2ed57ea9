"""Evaluate saved predictions of any model against ground truth (DIS metrics, plus matting metrics when they apply).

    python evaluate.py --pred-dir P --gt-dir G [--trimap-dir T] [--image-dir I] [--json out.json] [--out-dir D]

Files are matched by stem; predictions of another size are resized to the GT size (bilinear). Missing, unmatched and
unreadable files (and files above `--max-pixels`, default `$JAXMATTE_MAX_PIXELS` or 100 Mpx, refused from their
header) are listed, one line each, and skipped, never fatal; the run ends with `evaluated N images in NAME; skipped
K: ...`. Prints a table (maxFm, wFmeasure, MAE, Smeasure, meanEm, HCE, maxEm, meanFm, adpEm, adpFm, then SAD, MSE,
Grad, Conn when trimaps are given or the GT is soft). `--json` writes (or adds to) one object per dataset; a
per-image CSV and a PNG grid of the worst images go next to it (or into `--out-dir`). Every output path (`--out-dir`,
`--json`, `--csv`, `--worst-png`, `--save-preds`) is checked before any work.

Exit status: 0 every image was evaluated and no file was skipped or unmatched; 1 some files were skipped or
unmatched (each listed) but images were evaluated; 2 no image was evaluated (in some dataset, in model mode), or a
usage error (bad options, a missing input folder, an output path that is a file of the wrong kind or cannot be
written), found before the work.

Model mode: run a saved model over test sets (DIS `ROOT/im` + `ROOT/gt`, or a matting layout such as `rgb_images/`
+ `alpha_maps/`) and score it at the GT's resolution:

    python evaluate.py --checkpoint DIR --data ROOT [--data ROOT ...] [--config configs/tsr.py] [--json out.json]
        [--trimap-dir T]
        [--out-dir D] [--save-preds P] [--batch-size N] [--precision fp32|bf16]
        [--resize stretch|letterbox] [--input-size S] [--quantization round|truncate]

`--checkpoint`: converted directory or training workdir (best/, else last/). Geometry: `--resize/--input-size`, else
the `--config` file's `config.data` (`policy`, `size`), else what the checkpoint records. One JSON object
per dataset (named after ROOT), with a "prediction" entry naming checkpoint, geometry, quantisation and precision.
`--save-preds P` writes `P/<dataset>/<stem>.png`. `--trimap-dir T`: trimaps by stem, matting metrics over the unknown
region.

Trimap-input systems (DIM teacher / pruned students): each image's trimap comes from `--trimap-dir`, else from the
root's `trimaps/` or `trimap/` (an image without one is skipped; a root with neither is an error, exit 2). The
matting set is reported over the unknown region, followed by DCP's own numbers under their own names (`DCP_SAD`,
`DCP_MSE`, `DCP_Grad`, `DCP_Conn`: DCP's `test.py` protocol on the float predictions, `jaxmatte.metrics.compat`).

Metric sets (`--metrics`): `dis` as above; `matting` (the default in model mode for matting systems such as
dinomatte): MAE is the plain mean |alpha_pred - alpha_gt| (soft GT, no normalisation), then SAD, MSE, Grad, Conn, and
the other DIS metrics only when the GT is binary.

Trimaps (`--metrics trimap`, SegTrimap spec §10 / §11; `jaxmatte.trimap_evaluation`): saved trimap PNGs
(`--pred-dir`) against GT trimaps (`--trimap-dir`, or `--gt-dir`), predictions of another size resized with nearest
neighbour. In model mode a trimap system (SegTrimap) is scored this way by default; its input masks come from
`--mask-dir` by stem, else the GT alpha >= 30, and its GT labels from the trimaps (`--trimap-dir` or the root's
`trimap/`), else from the alpha with an `--unknown-band N` px unknown band (default 7). Two blocks are printed and
written: the clean block at the original resolution (pooled IoUs, mIoU, Unknown precision / recall, ...) and the
original evaluator's row-IoU on the letterboxed canvas (exact in model mode, approximate from saved trimaps).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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
    non_negative_int,
    output_problem,
    positive_int,
    select_device,
)
from jaxmatte.data.trimaps import DEFAULT_UNKNOWN_BAND
from jaxmatte.evaluation import (
    HCE_BINARIZE_RULES,
    MATTING_MODES,
    METRIC_SETS,
    Problem,
    default_dataset_name,
    evaluate_pairs,
    format_table,
    grid_items_from_pairs,
    pair_folders,
    read_json_object,
    summarize,
    worst_results,
    write_csv,
    write_json,
    write_worst_grid,
)
from jaxmatte.trimap_evaluation import (
    TRIMAP_METRICS,
    TrimapReport,
    evaluate_trimap_pairs,
    format_trimap_table,
    write_trimap_csv,
    write_trimap_json,
)

EXAMPLES = """examples:
  python evaluate.py --pred-dir preds/DIS-TE1 --gt-dir DIS5K/DIS-TE1/gt --image-dir DIS5K/DIS-TE1/im --out-dir eval/TE1
  python evaluate.py --pred-dir preds/comp1k --gt-dir Composition-1k/alpha --trimap-dir Composition-1k/trimaps \\
      --json out.json
  python evaluate.py --checkpoint runs/tsr --data DIS5K/DIS-TE1 --data DIS5K/DIS-TE2 --out-dir eval/tsr \\
      --save-preds eval/tsr/preds --batch-size 4
  python evaluate.py --checkpoint runs/tsr --data DIS5K/DIS-TE1 --out-dir eval/tsr_hr --high-res --tile 1024
  python evaluate.py --pred-dir trimaps/ --trimap-dir gt_trimaps/ --metrics trimap --json trimaps.json

exit status: 0 all evaluated; 1 some files skipped or unmatched (each listed), images evaluated; 2 no image
evaluated, or a usage error (before the work)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate saved predictions against ground truth (files matched by stem), or run a saved model "
        "over DIS-layout test sets (--checkpoint, --data).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--pred-dir", type=Path, help="folder of predicted masks / alpha mattes")
    parser.add_argument("--gt-dir", type=Path, help="folder of ground-truth masks / alpha mattes")
    parser.add_argument(
        "--trimap-dir", type=Path, help="trimaps (unknown = 128): matting metrics on the unknown region"
    )
    parser.add_argument("--image-dir", type=Path, help="input images, shown in the worst-images grid")
    parser.add_argument("--name", help="dataset name (default: the GT folder's parent for gt/, mask/, alpha/ folders)")
    parser.add_argument("--json", type=Path, help="results JSON; an existing file keeps its other datasets")
    parser.add_argument("--out-dir", type=Path, help="folder for metrics.json, the per-image CSV and the grid")
    parser.add_argument(
        "--csv", type=Path, help="per-image CSV (default: NAME_per_image.csv in --out-dir or beside the JSON)"
    )
    parser.add_argument(
        "--worst",
        type=non_negative_int,
        default=8,
        help="images in the worst-images grid, 0: none (default: %(default)s)",
    )
    parser.add_argument(
        "--worst-png", type=Path, help="worst-images grid (default: NAME_worst.png in --out-dir or beside the JSON)"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="worker processes (default: all cores, %(default)s)",
    )
    parser.add_argument(
        "--hce-binarize",
        choices=HCE_BINARIZE_RULES,
        default="dis",
        help="HCE binarisation of the prediction (default: %(default)s)",
    )
    parser.add_argument(
        "--matting",
        choices=MATTING_MODES,
        default="auto",
        help="matting metrics; auto (default): when trimaps are given or the GT is soft",
    )
    parser.add_argument(
        "--metrics",
        choices=(*METRIC_SETS, TRIMAP_METRICS),
        help="metric set: dis (DIS metrics, DIS MAE; default for saved predictions), matting (plain alpha MAE, SAD, "
        "MSE, Grad, Conn, DIS metrics only for binary GT), trimap (trimap IoUs vs GT trimaps); model mode defaults "
        "to the system's own set",
    )
    add_max_pixels_argument(parser)
    model = parser.add_argument_group("model mode (instead of --pred-dir / --gt-dir)")
    model.add_argument("--checkpoint", type=Path, help="converted directory or training workdir (best/, else last/)")
    model.add_argument(
        "--data", type=Path, action="append", default=[], help="DIS-layout root with im/ and gt/ (repeatable)"
    )
    model.add_argument(
        "--config", type=Path, help="experiment config file[:variant]; its config.data sets the geometry"
    )
    model.add_argument("--save-preds", type=Path, help="also write the predicted alpha PNGs to DIR/<dataset>/")
    model.add_argument(
        "--mask-dir", type=Path, help="input object masks by stem for mask-guided systems (default: GT alpha >= 30)"
    )
    model.add_argument(
        "--unknown-band",
        type=non_negative_int,
        default=DEFAULT_UNKNOWN_BAND,
        help="unknown band (px) of GT trimaps derived from alpha when no trimap is given (default: %(default)s)",
    )
    add_predictor_arguments(model)
    add_high_res_arguments(model)
    model.add_argument(
        "--chunk-size", type=positive_int, default=32, help="images scored per chunk (memory bound; default: 32)"
    )
    return parser


def output_paths(args: argparse.Namespace, name: str) -> tuple[Path | None, Path | None, Path | None]:
    """(json, csv, png): explicit paths, else inside --out-dir, else beside the JSON; None = not written."""
    json_path = args.json or (args.out_dir / "metrics.json" if args.out_dir else None)
    folder = args.out_dir or (json_path.parent if json_path else None)
    csv_path = args.csv or (folder / f"{name}_per_image.csv" if folder else None)
    png_path = args.worst_png or (folder / f"{name}_worst.png" if folder else None)
    return json_path, csv_path, png_path if args.worst > 0 else None


def problem_kind(reason: str) -> str:
    """A short class of a skip reason, for the summary line."""
    text = reason.lower()
    for fragment, kind in (
        ("pixel limit", "too large"),
        ("cannot write", "output blocked"),
        ("duplicate", "duplicate stem"),
        ("no prediction", "no prediction"),
        ("no ground truth", "no ground truth"),
        ("without ground truth", "no ground truth"),
        ("without an image", "no image"),
        ("no trimap", "no trimap"),
        ("without a trimap", "no trimap"),
        ("without an input mask", "no mask"),
        ("differ", "size mismatch"),
        ("below", "too small"),
    ):
        if fragment in text:
            return kind
    return "unreadable"


def print_problems(problems: Sequence[Problem]) -> None:
    """One line per skipped or unmatched file."""
    if not problems:
        return
    print(f"\nskipped or unmatched files ({len(problems)}):")
    for problem in problems:
        print(f"  {problem.name}: {problem.reason}")


def print_summary(name: str, images: int, problems: Sequence[Problem]) -> int:
    """The closing line of one dataset; returns its exit status."""
    line = f"evaluated {images} images in {name}"
    if problems:
        line += f"; skipped {len(problems)}: {count_kinds([problem_kind(problem.reason) for problem in problems])}"
    print(line)
    return exit_status(images, len(problems))


def check_outputs(args: argparse.Namespace, names: Sequence[str]) -> str | None:
    """The first output path that cannot be written (see `output_problem`), or None; nothing is created."""
    checks: list[tuple[Path | None, str, bool]] = [
        (args.out_dir, "--out-dir", True),
        (args.json, "--json", False),
        (args.csv, "--csv", False),
        (args.worst_png, "--worst-png", False),
        (args.save_preds, "--save-preds", True),
    ]
    for name in names:
        json_path, csv_path, png_path = output_paths(args, name)
        checks += [(path, "output file", False) for path in (json_path, csv_path, png_path)]
        if args.save_preds is not None:
            checks.append((args.save_preds / name, "--save-preds", True))
    for path, option, folder in checks:
        problem = output_problem(path, option, folder=folder) if path is not None else None
        if problem:
            return problem
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()
    try:
        apply_max_pixels(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.checkpoint is not None or args.data:
        given = [flag for flag in ("pred_dir", "gt_dir", "image_dir") if getattr(args, flag) is not None]
        if given:
            parser.error(f"--checkpoint/--data cannot be combined with --{given[0].replace('_', '-')}")
        if args.checkpoint is None or not args.data:
            parser.error("model mode needs both --checkpoint and at least one --data")
        return run_model_mode(args)
    if args.mask_dir is not None:
        parser.error("--mask-dir belongs to model mode (--checkpoint, --data)")
    if args.metrics == TRIMAP_METRICS:
        return run_trimap_pairs(parser, args)
    if args.pred_dir is None or args.gt_dir is None:
        parser.error("give --pred-dir and --gt-dir (saved predictions), or --checkpoint and --data (run a model)")
    for label, folder in (
        ("--pred-dir", args.pred_dir),
        ("--gt-dir", args.gt_dir),
        ("--trimap-dir", args.trimap_dir),
        ("--image-dir", args.image_dir),
    ):
        if folder is not None and not folder.is_dir():
            print(f"error: {label} {folder} is not a folder", file=sys.stderr)
            return 2
    name = args.name or default_dataset_name(args.gt_dir)
    json_path, csv_path, png_path = output_paths(args, name)
    problem = check_outputs(args, [name])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if json_path is not None and json_path.exists():
        try:
            read_json_object(json_path)  # fail before the work, not after it
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    pairs, problems = pair_folders(args.pred_dir, args.gt_dir, args.trimap_dir, args.image_dir)
    evaluation = evaluate_pairs(
        pairs,
        hce_binarize=args.hce_binarize,
        matting=args.matting,
        workers=args.workers,
        progress=True,
        metrics=args.metrics or "dis",
    )
    report = summarize(name, evaluation, problems)

    print(format_table([report]))
    print_problems(report.skipped)
    if report.images == 0:
        print_summary(name, 0, report.skipped)
        print(f"error: no image was evaluated ({len(pairs)} pairs found)", file=sys.stderr)
        return 2
    written = []
    if json_path is not None:
        written.append(write_json(json_path, [report]))
    if csv_path is not None:
        written.append(write_csv(csv_path, report))
    if png_path is not None:
        items = grid_items_from_pairs(pairs, worst_results(report.results, args.worst))
        written.append(write_worst_grid(png_path, items))
    for path in written:
        print(f"wrote {path}")
    return print_summary(name, report.images, report.skipped)


def run_trimap_pairs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """`--metrics trimap` on saved predictions: predicted trimaps vs GT trimaps (--trimap-dir, or --gt-dir)."""
    if args.pred_dir is None or (args.gt_dir is None) == (args.trimap_dir is None):
        parser.error("--metrics trimap needs --pred-dir and the GT trimaps as --trimap-dir (or --gt-dir), not both")
    gt_dir = args.trimap_dir or args.gt_dir
    for label, folder in (("--pred-dir", args.pred_dir), ("GT trimap folder", gt_dir)):
        if not folder.is_dir():
            print(f"error: {label} {folder} is not a folder", file=sys.stderr)
            return 2
    folder = gt_dir.resolve()
    generic = folder.name.lower() in ("trimap", "trimaps") and folder.parent.name
    name = args.name or (folder.parent.name if generic else default_dataset_name(gt_dir))
    json_path, csv_path, _ = output_paths(args, name)
    problem = check_outputs(args, [name])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if json_path is not None and json_path.exists():
        try:
            read_json_object(json_path)  # fail before the work, not after it
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    report = evaluate_trimap_pairs(args.pred_dir, gt_dir, name=name)
    return finish_trimap_report(report, json_path, csv_path)


def finish_trimap_report(
    report: TrimapReport, json_path: Path | None, csv_path: Path | None, extra: dict[str, Any] | None = None
) -> int:
    """Print and write one trimap report; its exit status (`print_summary`)."""
    print(format_trimap_table([report]))
    print(f"GT labels: {report.gt_labels}")
    print_problems(report.problems)
    if report.images == 0:
        print_summary(report.name, 0, report.problems)
        print(f"error: no image was evaluated in {report.name}", file=sys.stderr)
        return 2
    written = []
    if json_path is not None:
        written.append(write_trimap_json(json_path, [report], extra=extra))
    if csv_path is not None:
        written.append(write_trimap_csv(csv_path, report))
    for path in written:
        print(f"wrote {path}")
    return print_summary(report.name, report.images, report.problems)


# -------------------------------------------------------------------------------------------------------- model mode


def geometry_from_config(spec: str | Path) -> tuple[str | None, int | None]:
    """(resize policy, input side) of an experiment config's `config.data` (`policy`, `size`); None where it has
    none. `spec` is ``file.py[:variant]`` as `train.py` reads it (`jaxmatte.train.config.load_config`)."""
    from jaxmatte.train.config import load_config

    try:
        config = load_config(str(spec))
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
    data = _field(config, "data")
    if data is None:
        return None, None
    kind, size = _field(data, "policy"), _field(data, "size")
    from jaxmatte.predict import square_size

    return kind, square_size(size) if size is not None else None


def _field(obj: Any, key: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def run_model_mode(args: argparse.Namespace) -> int:
    names = [root.resolve().name for root in args.data]
    for root in args.data:
        if not root.is_dir():
            print(f"error: --data {root} is not a folder", file=sys.stderr)
            return 2
    if len(set(names)) != len(names):
        print(f"error: --data folders must have distinct names, got {names}", file=sys.stderr)
        return 2
    if len(names) > 1 and (args.csv or args.worst_png):
        print("error: --csv / --worst-png name one file; with several --data use --out-dir or --json", file=sys.stderr)
        return 2
    json_path = args.json or (args.out_dir / "metrics.json" if args.out_dir else None)
    problem = high_res_problem(args) or check_outputs(args, names)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        if json_path is not None and json_path.exists():
            read_json_object(json_path)  # fail before the work, not after it
        kind, size = geometry_from_config(args.config) if args.config else (None, None)
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from jaxmatte.evaluation import evaluate_folder  # JAX starts with the predictor

    try:
        print(select_device(args.device))
        predictor = make_predictor(args, resize_policy=kind, input_size=size)
    except (DeviceError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    description = {**predictor.describe(), "precision": args.precision}
    if predictor.output == "trimap" or args.metrics == TRIMAP_METRICS:
        return run_trimap_model_mode(args, predictor, names, json_path, description)
    if args.mask_dir is not None:
        print(f"error: --mask-dir: {predictor.family} reads no input masks", file=sys.stderr)
        return 2
    metrics = args.metrics or ("matting" if predictor.system.validation == "matting" else "dis")
    pre = predictor.preprocessing
    print(f"{predictor.directory}: {pre.policy.kind} {pre.policy.size}, {pre.quantization}, {args.precision}")
    if predictor.needs_trimap:
        print(f"trimaps: {args.trimap_dir} by stem" if args.trimap_dir else "trimaps: each root's trimaps/ or trimap/")

    reports, status = [], 0
    for root, name in zip(args.data, names, strict=True):
        try:
            report, worst = evaluate_folder(
                predictor,
                root,
                name=name,
                hce_binarize=args.hce_binarize,
                matting=args.matting,
                chunk_size=args.chunk_size,
                save_dir=args.save_preds / name if args.save_preds else None,
                worst=args.worst,
                progress=True,
                trimap_dir=args.trimap_dir,
                metrics=metrics,
            )
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        reports.append(report)
        print(format_table([report]))
        print_problems(report.skipped)
        _, csv_path, png_path = output_paths(args, name)
        written = []
        if json_path is not None:
            written.append(write_json(json_path, [report], extra={"prediction": description}))
        if csv_path is not None:
            written.append(write_csv(csv_path, report))
        if png_path is not None and worst:
            written.append(write_worst_grid(png_path, worst))
        for path in written:
            print(f"wrote {path}")
        status = max(status, print_summary(name, report.images, report.skipped))
    if len(reports) > 1:
        print(format_table(reports))
    empty = [report.name for report in reports if report.images == 0]
    if empty:
        print(f"error: no image was evaluated in {', '.join(empty)}", file=sys.stderr)
    return status


def run_trimap_model_mode(
    args: argparse.Namespace, predictor: Any, names: list[str], json_path: Path | None, description: dict[str, Any]
) -> int:
    """A trimap system over every --data root (`evaluate_trimap_folder`)."""
    from jaxmatte.trimap_evaluation import evaluate_trimap_folder

    if predictor.output != "trimap":
        print(f"error: --metrics trimap: {predictor.family} predicts {predictor.output}, not trimaps", file=sys.stderr)
        return 2
    if args.metrics not in (None, TRIMAP_METRICS):
        print(f"error: {predictor.family} predicts trimaps; --metrics {args.metrics} does not apply", file=sys.stderr)
        return 2
    pre = predictor.preprocessing
    print(f"{predictor.directory}: {pre.policy.kind} {pre.policy.size}, trimap, {args.precision}")
    if predictor.needs_mask:
        print(f"input masks: {args.mask_dir} by stem" if args.mask_dir else "input masks: GT alpha >= 30")
    reports, status = [], 0
    for root, name in zip(args.data, names, strict=True):
        try:
            report = evaluate_trimap_folder(
                predictor,
                root,
                name=name,
                mask_dir=args.mask_dir,
                trimap_dir=args.trimap_dir,
                unknown_band=args.unknown_band,
                save_dir=args.save_preds / name if args.save_preds else None,
                chunk_size=args.chunk_size,
            )
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        reports.append(report)
        _, csv_path, _ = output_paths(args, name)
        extra = {"prediction": {**description, "unknown_band": args.unknown_band}}
        status = max(status, finish_trimap_report(report, json_path, csv_path, extra))
    if len(reports) > 1:
        print(format_trimap_table(reports))
    return status


if __name__ == "__main__":
    sys.exit(main())
