"""Evaluation of predictions against ground truth: pairing, per-image metrics, dataset summaries and reports.

Two entry points feed the same per-image computation (`evaluate_arrays`) and the same reports:

- folders of saved predictions: `pair_folders` matches files by stem, `evaluate_pairs` reads and evaluates them in a
  process pool (each worker reads its own files; unreadable files are reported and skipped);
- in-memory records (`Record`: name, 8-bit prediction, GT, optional trimap and image), e.g. from a model run:
  `evaluate_records`.

Protocol (metrics spec, DIS section): a prediction of another size is resized to the GT size with OpenCV bilinear
interpolation (`cv2.resize(..., INTER_LINEAR)`); DIS metrics use GT > 128. Matting metrics (SAD, MSE, Grad, Conn at
the official scales) are added when trimaps are given (region: unknown pixels, trimap == 128) or when the GT is soft
(region: whole image); an image whose region is empty (a trimap without unknown pixels) has no MSE, and the dataset
MSE is the mean over the images that have one. "Soft" rule: the mean over the dataset's images of the fraction of GT
pixels strictly between 0 and 255 exceeds `SOFT_GT_FRACTION` (1 %). Binary masks, anti-aliased edges included, have a
small fraction (edge pixels only); alpha mattes have several percent (8 % on average for the alphamatting.com
training set).

Two metric sets (`METRIC_SETS`): ``"dis"`` (the default, above) and ``"matting"`` for alpha-matting models, where
**MAE** is the plain mean |alpha_pred - alpha_gt| of [0, 1] values at the GT's resolution (no min-max normalisation,
soft GT), the matting metrics always apply, and the DIS metrics (other than their MAE) are added only when the GT is
binary by the soft rule.

Reports: a text table (DIS papers' column order, then the matting metrics; MSE shown x1e3, HCE as an integer, the rest
with 3 decimals), JSON (one object per dataset, exact key names), a per-image CSV and a PNG grid of the worst images.

Original evaluators (`COMPAT_SYSTEMS`): for the DIM families a model run also reports DCP's own numbers (``DCP_*``,
`jaxmatte.metrics.compat`, computed from the float predictions) after the standard ones, in every report.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from tqdm import tqdm

from jaxmatte.data.io import ImageReadError, list_images, read_image, read_mask, write_png
from jaxmatte.metrics.compat import COMPAT_KEYS, compat_image_metrics, summarize_compat
from jaxmatte.metrics.dis import (
    DIS_KEYS,
    HCE_BINARIZE_RULES,
    DISImageStats,
    dis_image_row,
    dis_image_stats,
    resize_to_gt,
    summarize_dis,
)
from jaxmatte.metrics.matting import MATTING_KEYS, alpha_mae, matting_image_metrics, summarize_matting

SOFT_GT_FRACTION = 0.01
MattingMode = Literal["auto", "yes", "no"]
MATTING_MODES: tuple[str, ...] = ("auto", "yes", "no")
GT_FOLDER_NAMES = frozenset({"gt", "gts", "mask", "masks", "alpha", "alphas"})
# Among files sharing a stem, the first suffix here wins (lossless before lossy).
SUFFIX_PREFERENCE: tuple[str, ...] = (".png", ".tif", ".tiff", ".bmp", ".webp", ".jpg", ".jpeg")
TABLE_KEYS: tuple[str, ...] = (*DIS_KEYS, *MATTING_KEYS)
METRIC_SETS: tuple[str, ...] = ("dis", "matting")
MATTING_TABLE_KEYS: tuple[str, ...] = ("MAE", *MATTING_KEYS, *(key for key in DIS_KEYS if key != "MAE"))
# System family -> the original evaluator (`jaxmatte.metrics.compat.COMPAT_KEYS`) whose numbers a model run adds,
# computed from the float predictions.
COMPAT_SYSTEMS: dict[str, str] = {"dim": "DCP", "dim_student": "DCP"}
COMPAT_NOTES: dict[str, str] = {
    "DCP": "DCP_*: DCP test.py on float predictions, known regions forced: SAD whole image /1000, MSE whole image "
    "/ |unknown|, Grad /10, Conn /1000"
}


def table_keys(metrics: str) -> tuple[str, ...]:
    """The column order of a metric set."""
    _check_metric_set(metrics)
    return MATTING_TABLE_KEYS if metrics == "matting" else TABLE_KEYS


def _check_metric_set(metrics: str) -> None:
    if metrics not in METRIC_SETS:
        raise ValueError(f"metrics must be one of {METRIC_SETS}, got {metrics!r}")


# ----------------------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Pair:
    """Files of one image, matched by stem: prediction, GT, and optionally trimap and input image."""

    name: str
    pred: Path
    gt: Path
    trimap: Path | None = None
    image: Path | None = None


@dataclass(frozen=True)
class Record:
    """One image in memory: HxW uint8 prediction (any size), GT, optional trimap (GT size) and RGB image."""

    name: str
    pred: np.ndarray
    gt: np.ndarray
    trimap: np.ndarray | None = None
    image: np.ndarray | None = None


@dataclass(frozen=True)
class Problem:
    """A file that was not evaluated, and why."""

    name: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}


@dataclass(frozen=True)
class ImageResult:
    """Per-image numbers (picklable): DIS partial results, matting metrics when they apply, sizes (H, W), the plain
    alpha MAE and the GT's soft fraction; `metrics` names the set the row and `mae` report; `compat`: an original
    evaluator's numbers (`COMPAT_SYSTEMS`), or None."""

    name: str
    gt_size: tuple[int, int]
    pred_size: tuple[int, int]
    dis: DISImageStats
    matting: dict[str, float] | None = None
    alpha_mae: float = math.nan
    soft_fraction: float = 0.0
    metrics: str = "dis"
    compat: dict[str, float] | None = None

    def row(self) -> dict[str, Any]:
        """The per-image CSV row (the `compat` numbers last)."""
        row: dict[str, Any] = {
            "name": self.name,
            "height": self.gt_size[0],
            "width": self.gt_size[1],
            "pred_height": self.pred_size[0],
            "pred_width": self.pred_size[1],
        }
        dis = dis_image_row(self.dis)
        if self.metrics == "matting":
            row["MAE"] = self.alpha_mae
            row.update({key: self.matting[key] for key in MATTING_KEYS} if self.matting is not None else {})
            row.update({key: value for key, value in dis.items() if key != "MAE"})
        else:
            row.update(dis)
            if self.matting is not None:
                row.update({key: self.matting[key] for key in MATTING_KEYS})
        row.update(self.compat or {})
        return row

    @property
    def mae(self) -> float:
        return self.alpha_mae if self.metrics == "matting" else float(dis_image_row(self.dis)["MAE"])


@dataclass(frozen=True)
class Evaluation:
    """Per-image results of one dataset and the files that were skipped; `matting_region` None = no matting;
    `compat`: the original evaluator of the results' `compat` numbers, or None."""

    results: list[ImageResult]
    problems: list[Problem]
    matting_region: str | None
    hce_binarize: str = "dis"
    metrics: str = "dis"
    compat: str | None = None


@dataclass(frozen=True)
class DatasetReport:
    """Dataset summary: metric values by key, image count, skipped files, per-image results; `compat`: the original
    evaluator whose `COMPAT_KEYS` the summary also holds, or None."""

    name: str
    summary: dict[str, float]
    images: int
    skipped: list[Problem]
    matting_region: str | None
    hce_binarize: str
    results: list[ImageResult] = field(default_factory=list, repr=False)
    metrics: str = "dis"
    compat: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The JSON object of this dataset (metric keys in table order, then the compat keys; NaN written as null)."""
        keys = (*table_keys(self.metrics), *(COMPAT_KEYS[self.compat] if self.compat is not None else ()))
        data: dict[str, Any] = {key: _json_number(self.summary[key]) for key in keys if key in self.summary}
        data["images"] = self.images
        data["skipped"] = [problem.as_dict() for problem in self.skipped]
        data["matting_region"] = self.matting_region
        data["hce_binarize"] = self.hce_binarize
        if self.metrics != "dis":
            data["metrics"] = self.metrics
        return data


# ----------------------------------------------------------------------------------------------------------- pairing


def pair_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    trimap_dir: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
) -> tuple[list[Pair], list[Problem]]:
    """Match predictions, GTs (and trimaps, images) by file stem; sorted by name.

    Problems: GTs without prediction (or without trimap when a trimap folder is given), predictions without GT, and
    files ignored because another file in the same folder has the same stem (`SUFFIX_PREFERENCE` picks the one used).
    A missing input image only leaves its grid tile empty.
    """
    problems: list[Problem] = []
    preds = _index_by_stem(pred_dir, "prediction", problems)
    gts = _index_by_stem(gt_dir, "ground-truth", problems)
    trimaps = _index_by_stem(trimap_dir, "trimap", problems) if trimap_dir is not None else None
    images = _index_by_stem(image_dir, "image", problems) if image_dir is not None else {}

    pairs = []
    for name, gt in sorted(gts.items()):
        if name not in preds:
            problems.append(Problem(gt.name, "no prediction"))
            continue
        trimap = None
        if trimaps is not None:
            trimap = trimaps.get(name)
            if trimap is None:
                problems.append(Problem(gt.name, "no trimap"))
                continue
        pairs.append(Pair(name, preds[name], gt, trimap, images.get(name)))
    problems.extend(Problem(pred.name, "no ground truth") for name, pred in sorted(preds.items()) if name not in gts)
    return pairs, problems


def _index_by_stem(folder: str | os.PathLike, role: str, problems: list[Problem]) -> dict[str, Path]:
    by_stem: dict[str, list[Path]] = {}
    for path in list_images(folder):
        by_stem.setdefault(path.stem, []).append(path)
    index = {}
    for stem, paths in by_stem.items():
        paths.sort(key=lambda path: (SUFFIX_PREFERENCE.index(path.suffix.lower()), path.name))
        index[stem] = paths[0]
        problems.extend(
            Problem(path.name, f"duplicate stem in the {role} folder; {paths[0].name} used") for path in paths[1:]
        )
    return index


def default_dataset_name(gt_dir: str | os.PathLike) -> str:
    """The GT folder's parent name when the folder has a generic name (DIS-TE1/gt -> DIS-TE1), else its own name."""
    folder = Path(gt_dir).resolve()
    return folder.parent.name if folder.name.lower() in GT_FOLDER_NAMES and folder.parent.name else folder.name


# ------------------------------------------------------------------------------------------------ per-image metrics


def soft_fraction(gt: np.ndarray) -> float:
    """Fraction of GT pixels strictly between 0 and 255."""
    return float(np.count_nonzero((gt > 0) & (gt < 255)) / max(gt.size, 1))


def matting_applies(trimaps_given: bool, soft_fractions: Sequence[float], mode: MattingMode = "auto") -> bool:
    """The decision rule for matting metrics (see the module docstring); `mode` "yes" / "no" overrides it."""
    if mode not in MATTING_MODES:
        raise ValueError(f"matting mode must be one of {MATTING_MODES}, got {mode!r}")
    if mode != "auto":
        return mode == "yes"
    return trimaps_given or (len(soft_fractions) > 0 and float(np.mean(soft_fractions)) > SOFT_GT_FRACTION)


def evaluate_arrays(
    name: str,
    pred: np.ndarray,
    gt: np.ndarray,
    trimap: np.ndarray | None = None,
    *,
    with_matting: bool,
    hce_binarize: str = "dis",
    metrics: str = "dis",
) -> ImageResult:
    """Per-image DIS stats and (optionally; always for the matting set) matting metrics; `pred` is resized to the GT
    size first."""
    for label, array in (("prediction", pred), ("ground truth", gt), ("trimap", trimap)):
        if array is not None and (array.ndim != 2 or array.dtype != np.uint8):
            raise ValueError(f"{name}: {label} must be an HxW uint8 array, got {array.dtype} {array.shape}")
    if trimap is not None and trimap.shape != gt.shape:
        raise ValueError(f"{name}: trimap size {_size(trimap)} differs from the ground-truth size {_size(gt)}")
    pred_at_gt = resize_to_gt(pred, gt)
    stats = dis_image_stats(pred_at_gt, gt, hce_binarize=hce_binarize)
    with_matting = with_matting or metrics == "matting"
    matting = matting_image_metrics(pred_at_gt, gt, trimap) if with_matting else None
    return ImageResult(
        name, gt.shape, pred.shape, stats, matting, alpha_mae(pred_at_gt, gt), soft_fraction(gt), metrics
    )


def _size(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}"


def _read(path: Path, role: str) -> np.ndarray:
    """read_mask with the role in the error ("unreadable prediction x.png: truncated ...")."""
    try:
        return read_mask(path)
    except ImageReadError as exc:
        raise ImageReadError(path, f"unreadable {role} {path.name}: {exc.problem}") from None


def _evaluate_pair(task: tuple[Pair, bool, str, str]) -> ImageResult | Problem:
    """Worker: read the files of one pair and evaluate them; unreadable files and bad sizes become a Problem."""
    pair, with_matting, hce_binarize, metrics = task
    try:
        gt = _read(pair.gt, "ground truth")
        pred = _read(pair.pred, "prediction")
        trimap = _read(pair.trimap, "trimap") if pair.trimap is not None else None
        return evaluate_arrays(
            pair.name, pred, gt, trimap, with_matting=with_matting, hce_binarize=hce_binarize, metrics=metrics
        )
    except ImageReadError as exc:
        return Problem(pair.name, exc.problem)
    except ValueError as exc:
        return Problem(pair.name, str(exc))


def _gt_soft_fraction(path: Path) -> float | None:
    """Worker: the GT's soft fraction, None when unreadable (the main pass reports it)."""
    try:
        return soft_fraction(read_mask(path))
    except ImageReadError:
        return None


# ------------------------------------------------------------------------------------------------- dataset level


def evaluate_pairs(
    pairs: Sequence[Pair],
    *,
    hce_binarize: str = "dis",
    matting: MattingMode = "auto",
    workers: int | None = None,
    progress: bool = False,
    metrics: str = "dis",
) -> Evaluation:
    """Evaluate paired files in a process pool of `workers` (default: all cores; 1 = in this process)."""
    _check_hce_rule(hce_binarize)
    _check_metric_set(metrics)
    matting = "yes" if metrics == "matting" else matting
    trimaps_given = any(pair.trimap is not None for pair in pairs)
    workers = max(1, min(workers or os.cpu_count() or 1, len(pairs) or 1))
    with _executor(workers) as pool:
        fractions: list[float] = []
        if matting == "auto" and not trimaps_given:
            gts = [pair.gt for pair in pairs]
            found = _mapped(pool, _gt_soft_fraction, gts, workers, progress, "ground truth")
            fractions = [fraction for fraction in found if fraction is not None]
        with_matting = matting_applies(trimaps_given, fractions, matting)
        tasks = [(pair, with_matting, hce_binarize, metrics) for pair in pairs]
        outcomes = list(_mapped(pool, _evaluate_pair, tasks, workers, progress, "evaluating"))
    results = [outcome for outcome in outcomes if isinstance(outcome, ImageResult)]
    problems = [outcome for outcome in outcomes if isinstance(outcome, Problem)]
    return Evaluation(results, problems, _region(with_matting, trimaps_given), hce_binarize, metrics)


def evaluate_records(
    records: Sequence[Record],
    *,
    hce_binarize: str = "dis",
    matting: MattingMode = "auto",
    progress: bool = False,
    metrics: str = "dis",
) -> Evaluation:
    """Evaluate in-memory records in this process, with the same rules as `evaluate_pairs`.

    Records whose arrays are unusable (wrong dtype, mismatched trimap) become problems. The matting decision needs
    every GT first, hence a sequence; a streaming caller passes `matting="yes"` or `"no"`.
    """
    _check_hce_rule(hce_binarize)
    _check_metric_set(metrics)
    matting = "yes" if metrics == "matting" else matting
    trimaps_given = any(record.trimap is not None for record in records)
    fractions = [soft_fraction(record.gt) for record in records] if matting == "auto" and not trimaps_given else []
    with_matting = matting_applies(trimaps_given, fractions, matting)
    results, problems = [], []
    for record in tqdm(records, desc="evaluating", file=sys.stderr, disable=None if progress else True):
        try:
            results.append(
                evaluate_arrays(
                    record.name,
                    record.pred,
                    record.gt,
                    record.trimap,
                    with_matting=with_matting,
                    hce_binarize=hce_binarize,
                    metrics=metrics,
                )
            )
        except ValueError as exc:
            problems.append(Problem(record.name, str(exc)))
    return Evaluation(results, problems, _region(with_matting, trimaps_given), hce_binarize, metrics)


def summarize(name: str, evaluation: Evaluation, extra_problems: Sequence[Problem] = ()) -> DatasetReport:
    """Dataset numbers: `summarize_dis` (+ `summarize_matting`) over the evaluated images; for the matting set the
    plain alpha MAE, the matting metrics, and the other DIS metrics only when the GTs are binary (soft rule)."""
    results = sorted(evaluation.results, key=lambda result: result.name)
    summary: dict[str, float] = {}
    if results:
        dis = summarize_dis([result.dis for result in results])
        matting = [result.matting for result in results if result.matting is not None]
        if evaluation.metrics == "matting":
            summary["MAE"] = float(np.mean([result.alpha_mae for result in results], dtype=np.float64))
            summary.update(_defined_means(summarize_matting(matting), matting))
            if float(np.mean([result.soft_fraction for result in results])) <= SOFT_GT_FRACTION:
                summary.update({key: value for key, value in dis.items() if key != "MAE"})
        else:
            summary.update(dis)
            if evaluation.matting_region is not None:
                summary.update(_defined_means(summarize_matting(matting), matting))
        compat = [result.compat for result in results if result.compat is not None]
        if evaluation.compat is not None and compat:
            summary.update(_defined_means(summarize_compat(evaluation.compat, compat), compat))
    return DatasetReport(
        name=name,
        summary=summary,
        images=len(results),
        skipped=[*extra_problems, *evaluation.problems],
        matting_region=evaluation.matting_region,
        hce_binarize=evaluation.hce_binarize,
        results=results,
        metrics=evaluation.metrics,
        compat=evaluation.compat,
    )


def _defined_means(summary: dict[str, float], rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """`summary` with the MSE keys averaged over the images that have one: an image whose trimap has no unknown
    pixel (e.g. an all-0 or all-255 GT) has an empty region, so no mean error; it must not make the dataset's NaN."""
    for key in ("MSE", "DCP_MSE"):
        if key in summary and not math.isfinite(summary[key]):
            defined = [row[key] for row in rows if math.isfinite(row[key])]
            if defined:
                summary[key] = float(np.mean(defined, dtype=np.float64))
    return summary


def _region(with_matting: bool, trimaps_given: bool) -> str | None:
    if not with_matting:
        return None
    return "unknown" if trimaps_given else "whole"


def _check_hce_rule(hce_binarize: str) -> None:
    if hce_binarize not in HCE_BINARIZE_RULES:
        raise ValueError(f"hce_binarize must be one of {HCE_BINARIZE_RULES}, got {hce_binarize!r}")


class _InProcess:
    """The executor interface, run here (one worker: no process start-up cost)."""

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int = 1) -> Iterator[Any]:
        return map(fn, items)

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


def _executor(workers: int) -> ProcessPoolExecutor | _InProcess:
    # "spawn": forking a process that has started JAX's threads can deadlock.
    if workers <= 1:
        return _InProcess()
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one image per process: no nested OpenCV thread pools


def _mapped(
    pool: ProcessPoolExecutor | _InProcess,
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    workers: int,
    progress: bool,
    description: str,
) -> Iterator[Any]:
    """`pool.map` in chunks (a few per worker, at most 16 items), in order, with a progress bar on stderr."""
    chunksize = max(1, min(16, len(items) // (4 * workers)))
    outcomes = pool.map(fn, items, chunksize=chunksize)
    return iter(tqdm(outcomes, total=len(items), desc=description, file=sys.stderr, disable=None if progress else True))


# ----------------------------------------------------------------------------------------------------------- reports


def format_table(reports: Sequence[DatasetReport]) -> str:
    """Aligned text table, one row per dataset: DIS columns in the papers' order, then matting columns if any (the
    matting set: MAE, the matting columns, then the DIS columns any dataset has), then any compat columns."""
    with_matting = any(report.matting_region is not None for report in reports)
    if reports and all(report.metrics == "matting" for report in reports):
        present = {key for report in reports for key in report.summary}
        keys = [key for key in MATTING_TABLE_KEYS if key in present or key in ("MAE", *MATTING_KEYS)]
    else:
        keys = list(DIS_KEYS) + (list(MATTING_KEYS) if with_matting else [])
    compat = list(dict.fromkeys(report.compat for report in reports if report.compat is not None))
    keys += [key for system in compat for key in COMPAT_KEYS[system]]
    header = ["dataset", "images", *("MSE(x1e3)" if key == "MSE" else key for key in keys)]
    rows = [
        [report.name, str(report.images), *(_format_value(key, report.summary.get(key)) for key in keys)]
        for report in reports
    ]
    widths = [max(len(line[column]) for line in [header, *rows]) for column in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in [header, *rows]
    ]
    if with_matting:
        described = {"unknown": "unknown (trimap == 128)", "whole": "whole image (no trimap)"}
        regions = sorted({described[report.matting_region] for report in reports if report.matting_region})
        lines.append(f"matting region: {', '.join(regions)}; SAD, Grad, Conn /1000; MSE x1e3")
    lines.extend(COMPAT_NOTES[system] for system in compat if system in COMPAT_NOTES)
    return "\n".join(lines)


def _format_value(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "nan"
    if key == "HCE":
        return str(round(value))
    if key == "DCP_MSE":
        return f"{value:.4f}"  # raw, as DCP prints it
    if key == "MSE":
        value *= 1e3
    return f"{value:.3f}"


def _json_number(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def write_json(
    path: str | os.PathLike,
    reports: Sequence[DatasetReport],
    merge: bool = True,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `{dataset: {...}}`; with `merge`, datasets already in an existing file are kept (same name replaced).
    `extra` entries (e.g. ``{"prediction": ...}`` naming the model) are added to every dataset's object."""
    path = Path(path)
    data: dict[str, Any] = read_json_object(path) if merge and path.exists() else {}
    data.update({report.name: {**report.as_json(), **(extra or {})} for report in reports})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    return path


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """An existing results file; ValueError when it is not a JSON object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def write_csv(path: str | os.PathLike, report: DatasetReport) -> Path:
    """One row per evaluated image: name, sizes, per-image DIS numbers, matting numbers when they apply."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [result.row() for result in report.results]
    columns = list(rows[0]) if rows else ["name", "height", "width", "pred_height", "pred_width"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


# ------------------------------------------------------------------------------------------------ worst-images grid


@dataclass(frozen=True)
class GridItem:
    """One column of the worst-images grid: GT, prediction at GT size, optional RGB image."""

    name: str
    mae: float
    gt: np.ndarray
    pred: np.ndarray
    image: np.ndarray | None = None


def worst_results(results: Sequence[ImageResult], count: int) -> list[ImageResult]:
    """The `count` images with the largest MAE (ties by name)."""
    return sorted(results, key=lambda result: (-result.mae, result.name))[: max(count, 0)]


def grid_items_from_pairs(pairs: Sequence[Pair], results: Sequence[ImageResult]) -> list[GridItem]:
    """Re-read the files of `results` (e.g. the worst ones) for the grid; files that fail now are left out."""
    by_name = {pair.name: pair for pair in pairs}
    items = []
    for result in results:
        pair = by_name[result.name]
        try:
            gt = read_mask(pair.gt)
            pred = resize_to_gt(read_mask(pair.pred), gt)
            image = read_image(pair.image) if pair.image is not None else None
        except ImageReadError:
            continue
        items.append(GridItem(result.name, result.mae, gt, pred, image))
    return items


def grid_items_from_records(records: Sequence[Record], results: Sequence[ImageResult]) -> list[GridItem]:
    """Grid columns for `results` from in-memory records."""
    by_name = {record.name: record for record in records}
    items = []
    for result in results:
        record = by_name[result.name]
        pred = resize_to_gt(record.pred, record.gt)
        items.append(GridItem(result.name, result.mae, record.gt, pred, record.image))
    return items


def render_grid(items: Sequence[GridItem], tile: int = 192) -> np.ndarray:
    """RGB uint8 grid: one column per item (label: file name, MAE), rows image (if any), GT, prediction, |error|."""
    with_images = any(item.image is not None for item in items)
    row_names = (["image"] if with_images else []) + ["GT", "prediction", "|error|"]
    label_height, margin, row_label_width = 40, 4, 84
    width = row_label_width + len(items) * (tile + margin) + margin
    height = label_height + len(row_names) * (tile + margin) + margin
    canvas = np.full((height, width, 3), 32, np.uint8)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.42
    for row, row_name in enumerate(row_names):
        y = label_height + row * (tile + margin) + tile // 2
        cv2.putText(canvas, row_name, (margin, y), font, scale, (230, 230, 230), 1, cv2.LINE_AA)
    for column, item in enumerate(items):
        x = row_label_width + column * (tile + margin)
        name = _fit_text(item.name, tile, font, scale)
        cv2.putText(canvas, name, (x, 16), font, scale, (230, 230, 230), 1, cv2.LINE_AA)
        cv2.putText(canvas, f"MAE {item.mae:.3f}", (x, 34), font, scale, (255, 200, 80), 1, cv2.LINE_AA)
        error = cv2.applyColorMap(cv2.absdiff(item.pred, item.gt), cv2.COLORMAP_INFERNO)[..., ::-1]
        tiles = ([item.image] if with_images else []) + [item.gt, item.pred, error]
        for row, content in enumerate(tiles):
            y = label_height + row * (tile + margin)
            if content is not None:
                _paste_thumbnail(canvas, content, x, y, tile)
    return canvas


def write_worst_grid(path: str | os.PathLike, items: Sequence[GridItem], tile: int = 192) -> Path:
    """Render `items` with `render_grid` and save the PNG."""
    return write_png(path, render_grid(items, tile))


def _fit_text(text: str, width: int, font: int, scale: float) -> str:
    """`text`, shortened with '...' in the middle until it fits `width` pixels."""
    if cv2.getTextSize(text, font, scale, 1)[0][0] <= width:
        return text
    keep = len(text)
    while keep > 1:
        keep -= 1
        head, tail = text[: (keep + 1) // 2], text[len(text) - keep // 2 :]
        short = f"{head}...{tail}"
        if cv2.getTextSize(short, font, scale, 1)[0][0] <= width:
            return short
    return text[:1]


def _paste_thumbnail(canvas: np.ndarray, content: np.ndarray, x: int, y: int, tile: int) -> None:
    """Fit `content` (HxW or HxWx3) into a tile x tile square at (x, y), aspect ratio kept, centred."""
    height, width = content.shape[:2]
    scale = tile / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
    thumb = cv2.resize(np.ascontiguousarray(content), size, interpolation=interpolation)
    if thumb.ndim == 2:
        thumb = np.repeat(thumb[..., None], 3, axis=2)
    top, left = y + (tile - size[1]) // 2, x + (tile - size[0]) // 2
    canvas[top : top + size[1], left : left + size[0]] = thumb


# ---------------------------------------------------------------------------------------------- dataset evaluation

GRID_THUMBNAIL = 384  # worst-image columns are kept at most this large (the grid shows 192 px tiles)


def open_dataset_folder(root: Path, trimap_dir: str | os.PathLike | None = None) -> Any:
    """The image / ground-truth folders of one split, unvalidated (problems are listed, not raised); trimaps from
    `trimap_dir`, else from the root's ``trimaps/`` / ``trimap/`` folder if any."""
    from jaxmatte.data.folders import open_folders

    return open_folders(root, validate=False, trimap_dir=trimap_dir)


def compat_system(predictor: Any) -> str | None:
    """The original evaluator (`COMPAT_SYSTEMS`) of a predictor's system, or None."""
    system = getattr(predictor, "system", None)
    return COMPAT_SYSTEMS.get(getattr(system, "name", None) or getattr(predictor, "family", ""))


def evaluate_folder(
    predictor: Any,
    root: str | os.PathLike,
    *,
    name: str | None = None,
    hce_binarize: str = "dis",
    matting: str = "auto",
    chunk_size: int = 32,
    save_dir: str | os.PathLike | None = None,
    worst: int = 0,
    progress: bool = False,
    trimap_dir: str | os.PathLike | None = None,
    metrics: str = "dis",
) -> tuple[DatasetReport, list[GridItem]]:
    """Predict the images of a dataset folder with `predictor` (a `jaxmatte.predict.Predictor`) and score them
    against the ground truth at its original resolution.

    `root` is a split in any layout `jaxmatte.data.folders` reads (DIS ``im/`` + ``gt/``, ``rgb_images/`` +
    ``alpha_maps/``, ``image/`` + ``alpha/``). With `trimap_dir` (trimaps matched by stem, unknown = 128) the matting
    metrics cover the unknown region; a missing trimap is reported and that image skipped. `metrics`: the metric set
    (`METRIC_SETS`; "matting" implies the matting metrics).
    A predictor that reads trimaps (``needs_trimap``, e.g. DIM) gets them from `trimap_dir`, else from the root's
    ``trimaps/`` / ``trimap/`` folder (FileNotFoundError when there is neither); they also set the matting region.
    For a system in `COMPAT_SYSTEMS` its original evaluator's numbers are added, computed from the float
    predictions (resized to the GT size like the 8-bit ones when the sizes differ).
    Returns (`DatasetReport`, the `worst` images as small `GridItem`s). Records go to `evaluate_records` in chunks of
    `chunk_size`, so memory stays bounded; with `matting="auto"` the GTs are read once beforehand for the
    soft-GT decision. Unreadable images or GTs are reported as skipped. `save_dir`: also write `<stem>.png` there.
    """
    _check_metric_set(metrics)
    matting = "yes" if metrics == "matting" else matting
    root = Path(root)
    name = name or root.resolve().name
    needs_trimap = bool(getattr(predictor, "needs_trimap", False))
    compat = compat_system(predictor)
    folders = open_dataset_folder(root, trimap_dir) if needs_trimap else open_dataset_folder(root)
    trimaps: dict[str, Path] = {}
    listing_problems = [Problem(path.name, reason) for path, reason in folders.problems]
    if needs_trimap:
        # with a trimap folder, the folders keep only the images that have a trimap; without one, none has
        trimaps = {stem: folders.trimap_path(index) for index, stem in enumerate(folders.names)}
        if any(path is None for path in trimaps.values()):
            family = getattr(predictor, "family", "this model")
            raise FileNotFoundError(
                f"{root}: no trimaps for {family}, which predicts from an image and its trimap; add a trimaps/ or "
                "trimap/ folder to the root or give a trimap folder (--trimap-dir)"
            )
    elif trimap_dir is not None:
        trimaps = _index_by_stem(trimap_dir, "trimap", listing_problems)
    pairs = [(stem, *folders.paths(index)[:2]) for index, stem in enumerate(folders.names)]
    if trimap_dir is not None and not needs_trimap:
        missing = [stem for stem, _, _ in pairs if stem not in trimaps]
        listing_problems.extend(Problem(stem, f"no trimap {stem}.* in {trimap_dir}") for stem in missing)
        pairs = [pair for pair in pairs if pair[0] in trimaps]
    show = None if progress else True

    if trimap_dir is not None or needs_trimap:
        with_matting = matting != "no"
    elif matting == "auto":
        fractions = []
        for _, _, gt_path in tqdm(pairs, desc=f"{name} ground truth", file=sys.stderr, disable=show):
            with suppress(ImageReadError):  # reported by the main pass
                fractions.append(soft_fraction(read_mask(gt_path)))
        with_matting = matting_applies(False, fractions, "auto")
    elif matting in ("yes", "no"):
        with_matting = matting == "yes"
    else:
        raise ValueError(f"matting must be 'auto', 'yes' or 'no', got {matting!r}")

    results: list[Any] = []
    problems: list[Any] = []
    worst_items: list[Any] = []
    compat_rows: dict[str, dict[str, float]] = {}

    def flush(chunk: list[Any]) -> None:
        mode = "yes" if with_matting else "no"
        evaluation = evaluate_records(chunk, hce_binarize=hce_binarize, matting=mode, metrics=metrics)
        if compat is not None:  # attach the compat numbers; those of records that became problems are dropped
            scored = [replace(result, compat=compat_rows.pop(result.name, None)) for result in evaluation.results]
            evaluation = replace(evaluation, results=scored)
            compat_rows.clear()
        results.extend(evaluation.results)
        problems.extend(evaluation.problems)
        if worst > 0:
            fresh = [_shrink(item) for item in grid_items_from_records(chunk, worst_results(evaluation.results, worst))]
            worst_items[:] = sorted([*worst_items, *fresh], key=lambda item: (-item.mae, item.name))[:worst]

    if compat is not None:
        from jaxmatte.predict import quantize  # the uint8 results come from the float ones

    chunk: list[Any] = []
    image_paths = [image_path for _, image_path, _ in pairs]
    options: dict[str, Any] = {"with_images": worst > 0}
    if needs_trimap:
        options["masks"] = [trimaps[stem] for stem, _, _ in pairs]
    if compat is not None:
        options["floats"] = True
    predictions = predictor.predict_files(image_paths, **options)
    bar = tqdm(zip(pairs, predictions, strict=True), total=len(pairs), desc=name, file=sys.stderr, disable=show)
    for (stem, image_path, gt_path), (_, alpha, *image) in bar:
        if isinstance(alpha, ImageReadError):
            if needs_trimap and alpha.path == trimaps[stem]:
                problems.append(Problem(stem, f"unreadable trimap {alpha.path.name}: {alpha.problem}"))
            else:
                problems.append(Problem(stem, f"unreadable image {image_path.name}: {alpha.problem}"))
            continue
        floats = None
        if compat is not None:
            floats, alpha = alpha, quantize(alpha, predictor.preprocessing.quantization)
        if save_dir is not None:
            try:
                write_png(Path(save_dir) / f"{stem}.png", alpha)
            except OSError as error:
                problems.append(Problem(stem, f"cannot write {Path(save_dir) / f'{stem}.png'} ({error.strerror})"))
                continue
        try:
            gt = read_mask(gt_path)
        except ImageReadError as error:
            problems.append(Problem(stem, f"unreadable ground truth {gt_path.name}: {error.problem}"))
            continue
        trimap = None
        if stem in trimaps:
            try:
                trimap = read_mask(trimaps[stem])
            except ImageReadError as error:
                problems.append(Problem(stem, f"unreadable trimap {trimaps[stem].name}: {error.problem}"))
                continue
        if floats is not None and (trimap is None or trimap.shape == gt.shape):  # else evaluate_records reports it
            compat_rows[stem] = compat_image_metrics(compat, resize_to_gt(floats, gt), gt, trimap)
        chunk.append(Record(stem, alpha, gt, trimap, image=image[0] if image else None))
        if len(chunk) >= chunk_size:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)
    region = _region(with_matting, bool(trimaps))
    evaluation = Evaluation(results, problems, region, hce_binarize, metrics, compat)
    return summarize(name, evaluation, listing_problems), worst_items


def _shrink(item: Any) -> Any:
    """A grid item with its arrays reduced to at most `GRID_THUMBNAIL` pixels on the longer side."""
    height, width = item.gt.shape[:2]
    scale = GRID_THUMBNAIL / max(height, width)
    if scale >= 1:
        return item
    size = (max(1, round(width * scale)), max(1, round(height * scale)))

    def small(array: np.ndarray | None) -> np.ndarray | None:
        return None if array is None else cv2.resize(array, size, interpolation=cv2.INTER_AREA)

    return replace(item, gt=small(item.gt), pred=small(item.pred), image=small(item.image))
