"""Evaluate saved predictions of any model against ground truth (DIS metrics, plus matting metrics when they apply).

    python evaluate.py --pred-dir P --gt-dir G [--trimap-dir T] [--image-dir I] [--json out.json] [--out-dir D]

Files are matched by stem; predictions of another size are resized to the GT size (bilinear). Missing, unmatched and
unreadable files are listed, not fatal. Prints a table (maxFm, wFmeasure, MAE, Smeasure, meanEm, HCE, maxEm, meanFm,
adpEm, adpFm, then SAD, MSE, Grad, Conn when trimaps are given or the GT is soft). `--json` writes (or adds to) one
object per dataset; a per-image CSV and a PNG grid of the worst images go next to it (or into `--out-dir`).
Exit status: 0 when at least one image was evaluated, 2 otherwise or on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxmatte.evaluation import (
    HCE_BINARIZE_RULES,
    MATTING_MODES,
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


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate saved predictions against ground truth (files matched by stem)."
    )
    parser.add_argument("--pred-dir", type=Path, required=True, help="folder of predicted masks / alpha mattes")
    parser.add_argument("--gt-dir", type=Path, required=True, help="folder of ground-truth masks / alpha mattes")
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
    args = build_parser().parse_args(argv)
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
        pairs, hce_binarize=args.hce_binarize, matting=args.matting, workers=args.workers, progress=True
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


if __name__ == "__main__":
    sys.exit(main())
