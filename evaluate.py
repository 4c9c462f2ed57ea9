"""Evaluate saved predictions of any model against ground truth (DIS metrics, plus matting metrics when they apply).

    python evaluate.py --pred-dir P --gt-dir G [--trimap-dir T] [--image-dir I] [--json out.json] [--out-dir D]

Files are matched by stem; predictions of another size are resized to the GT size (bilinear). Missing, unmatched and
unreadable files are listed, not fatal. Prints a table (maxFm, wFmeasure, MAE, Smeasure, meanEm, HCE, maxEm, meanFm,
adpEm, adpFm, then SAD, MSE, Grad, Conn when trimaps are given or the GT is soft). `--json` writes (or adds to) one
object per dataset; a per-image CSV and a PNG grid of the worst images go next to it (or into `--out-dir`).
Exit status: 0 when at least one image was evaluated, 2 otherwise or on bad arguments.

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
region. Exit status 0 when every dataset had an evaluated image.

Metric sets (`--metrics`): `dis` as above; `matting` (the default in model mode for matting systems such as
dinomatte): MAE is the plain mean |alpha_pred - alpha_gt| (soft GT, no normalisation), then SAD, MSE, Grad, Conn, and
the other DIS metrics only when the GT is binary.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxmatte.cli import add_predictor_arguments, make_predictor, non_negative_int, positive_int
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

SHOWN_PROBLEMS = 50


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate saved predictions against ground truth (files matched by stem), or run a saved model "
        "over DIS-layout test sets (--checkpoint, --data)."
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
        choices=METRIC_SETS,
        help="metric set: dis (DIS metrics, DIS MAE; default for saved predictions), matting (plain alpha MAE, SAD, "
        "MSE, Grad, Conn, DIS metrics only for binary GT); model mode defaults to the system's own set",
    )
    model = parser.add_argument_group("model mode (instead of --pred-dir / --gt-dir)")
    model.add_argument("--checkpoint", type=Path, help="converted directory or training workdir (best/, else last/)")
    model.add_argument(
        "--data", type=Path, action="append", default=[], help="DIS-layout root with im/ and gt/ (repeatable)"
    )
    model.add_argument(
        "--config", type=Path, help="experiment config file[:variant]; its config.data sets the geometry"
    )
    model.add_argument("--save-preds", type=Path, help="also write the predicted alpha PNGs to DIR/<dataset>/")
    add_predictor_arguments(model)
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


def print_problems(problems: Sequence[Problem]) -> None:
    if not problems:
        return
    print(f"\nskipped or unmatched files ({len(problems)}):")
    for problem in problems[:SHOWN_PROBLEMS]:
        print(f"  {problem.name}: {problem.reason}")
    if len(problems) > SHOWN_PROBLEMS:
        print(f"  ... and {len(problems) - SHOWN_PROBLEMS} more (all are in the JSON)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.checkpoint is not None or args.data:
        given = [flag for flag in ("pred_dir", "gt_dir", "image_dir") if getattr(args, flag) is not None]
        if given:
            parser.error(f"--checkpoint/--data cannot be combined with --{given[0].replace('_', '-')}")
        if args.checkpoint is None or not args.data:
            parser.error("model mode needs both --checkpoint and at least one --data")
        return run_model_mode(args)
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
    return 0


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
    try:
        if json_path is not None and json_path.exists():
            read_json_object(json_path)  # fail before the work, not after it
        kind, size = geometry_from_config(args.config) if args.config else (None, None)
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from jaxmatte.evaluation import evaluate_folder  # JAX starts with the predictor

    try:
        predictor = make_predictor(args, resize_policy=kind, input_size=size)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    description = {**predictor.describe(), "precision": args.precision}
    metrics = args.metrics or ("matting" if predictor.system.validation == "matting" else "dis")
    pre = predictor.preprocessing
    print(f"{predictor.directory}: {pre.policy.kind} {pre.policy.size}, {pre.quantization}, {args.precision}")

    reports = []
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
    if len(reports) > 1:
        print(format_table(reports))
    empty = [report.name for report in reports if report.images == 0]
    if empty:
        print(f"error: no image was evaluated in {', '.join(empty)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
