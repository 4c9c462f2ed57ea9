"""Evaluation of trimap predictions (SegTrimap spec §10, §11): saved trimap PNGs, or a trimap model over a dataset.

Two blocks per dataset (`jaxmatte.metrics.trimap`): the clean block (``TRIMAP_KEYS``), one confusion matrix pooled
over every pixel at the GT's original resolution, and the compatibility block (``COMPAT_KEYS``), the original
evaluator's row-IoU on the letterboxed canvas, padding included.

- `evaluate_trimap_pairs`: predicted trimaps (any 8-bit trimap, e.g. 0 / 128 / 255) against GT trimaps matched by
  stem. The compat block letterboxes both label maps with nearest neighbour, which only approximates the original's
  argmax of canvas logits (the logits are gone once a trimap is saved at the original size).
- `evaluate_trimap_folder`: a trimap `Predictor` over a dataset root. The clean block scores `Predictor.finish` at
  the original size; the compat block is exact: argmax of the canvas logits against the letterboxed GT labels.

Reports (`TrimapReport`): a text table, JSON merged into an existing metrics file (one object per dataset, like the
DIS / matting reports) and a per-image CSV.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jaxmatte.data.io import ImageReadError, read_mask, write_png
from jaxmatte.data.transforms import ResizePolicy, resize_uint8
from jaxmatte.data.trimaps import DEFAULT_UNKNOWN_BAND, mask_from_alpha, record_labels
from jaxmatte.evaluation import Problem, pair_folders, read_json_object
from jaxmatte.metrics.trimap import (
    COMPAT_KEYS,
    TRIMAP_KEYS,
    RowIoUCompat,
    TrimapMetrics,
    labels_to_png,
    trimap_labels,
)

TRIMAP_METRICS = "trimap"  # the --metrics name of this set
COMPAT_CANVAS = 448  # the original evaluator's canvas side

__all__ = [
    "COMPAT_CANVAS",
    "TRIMAP_METRICS",
    "TrimapReport",
    "evaluate_trimap_folder",
    "evaluate_trimap_pairs",
    "format_trimap_table",
    "write_trimap_csv",
    "write_trimap_json",
]


@dataclass(frozen=True)
class TrimapReport:
    """One dataset: summary (``TRIMAP_KEYS`` + ``COMPAT_KEYS``), per-image rows (name, size, clean keys), skipped
    files. `gt_labels` says where the GT classes came from; `canvas` describes the compat block's canvas."""

    name: str
    images: int
    summary: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)
    problems: list[Problem] = field(default_factory=list)
    gt_labels: str = "trimap files"
    canvas: str = f"letterbox {COMPAT_CANVAS}"
    compat_exact: bool = False

    def as_json(self) -> dict[str, Any]:
        """The dataset's JSON object (NaN written as null)."""
        data: dict[str, Any] = {key: _json_number(self.summary[key]) for key in (*TRIMAP_KEYS, *COMPAT_KEYS)}
        data["images"] = self.images
        data["skipped"] = [problem.as_dict() for problem in self.problems]
        data["metrics"] = TRIMAP_METRICS
        data["gt_labels"] = self.gt_labels
        data["compat_canvas"] = self.canvas
        data["compat_exact"] = self.compat_exact
        return data


class _Accumulator:
    """Both blocks plus the per-image rows of one dataset."""

    def __init__(self) -> None:
        self.clean = TrimapMetrics()
        self.compat = RowIoUCompat()
        self.rows: list[dict[str, Any]] = []

    def add(self, name: str, pred: np.ndarray, gt: np.ndarray, pred_canvas: np.ndarray, gt_canvas: np.ndarray):
        row = self.clean.add(pred, gt)
        self.compat.add(pred_canvas, gt_canvas)
        self.rows.append({"name": name, "height": gt.shape[0], "width": gt.shape[1], **row})

    def report(self, name: str, problems: list[Problem], **kwargs: Any) -> TrimapReport:
        summary = {**self.clean.summary(), **self.compat.summary()}
        return TrimapReport(name, self.clean.images, summary, self.rows, problems, **kwargs)


# ------------------------------------------------------------------------------------------------ saved trimaps


def evaluate_trimap_pairs(
    pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, *, name: str | None = None, size: int = COMPAT_CANVAS
) -> TrimapReport:
    """Score saved predicted trimaps against GT trimaps, files matched by stem (both read as 8-bit grayscale and
    mapped to classes with `trimap_labels`).

    A prediction of another size is resized to the GT size with nearest neighbour. The clean block is pooled at the
    GT resolution. The compat block letterboxes both label maps onto a `size` canvas with nearest neighbour (zero =
    BG padding): from saved original-size trimaps this approximates the original evaluator's argmax of the canvas
    logits (model mode, `evaluate_trimap_folder`, is exact). Missing, unmatched and unreadable files are listed in
    `problems`, not raised.
    """
    pairs, problems = pair_folders(pred_dir, gt_dir)
    policy = ResizePolicy("letterbox", size)
    scores = _Accumulator()
    for pair in pairs:
        try:
            gt = trimap_labels(_read(pair.gt, "ground-truth trimap"))
            pred = _read(pair.pred, "prediction")
        except ImageReadError as error:
            problems.append(Problem(pair.name, error.problem))
            continue
        if pred.shape != gt.shape:
            pred = resize_uint8(pred, gt.shape, "nearest")
        pred = trimap_labels(pred)
        scores.add(pair.name, pred, gt, policy.mask(pred), policy.mask(gt))
    name = name or Path(gt_dir).resolve().name
    return scores.report(name, problems, gt_labels="trimap files", canvas=f"letterbox {size}")


def _read(path: Path, role: str) -> np.ndarray:
    try:
        return read_mask(path)
    except ImageReadError as error:
        raise ImageReadError(path, f"unreadable {role} {path.name}: {error.problem}") from None


# ------------------------------------------------------------------------------------------------ model mode


def evaluate_trimap_folder(
    predictor: Any,
    root: str | os.PathLike,
    *,
    name: str | None = None,
    mask_dir: str | os.PathLike | None = None,
    trimap_dir: str | os.PathLike | None = None,
    unknown_band: int = DEFAULT_UNKNOWN_BAND,
    save_dir: str | os.PathLike | None = None,
    chunk_size: int = 32,
) -> TrimapReport:
    """Run a trimap `Predictor` over a dataset root (any `jaxmatte.data.folders` layout) and score it.

    Input masks (systems that read one): `mask_dir` files by stem, else the GT alpha >= 30. GT labels
    (`record_labels`): the record's trimap (a ``trimap/`` folder in the root, or `trimap_dir`), else derived from the
    alpha with an `unknown_band` px band; `TrimapReport.gt_labels` says which. Clean block: `predictor.finish` at the
    original size; compat block (exact): argmax of the canvas logits against the GT labels placed on the canvas with
    nearest neighbour (`ResizePolicy.mask`). Records are read `chunk_size` at a time and predicted in batches of
    `predictor.batch_size`, so memory stays bounded. `save_dir`: also write ``<stem>.png`` trimaps (0 / 128 / 255).
    Unreadable or mismatched files are reported and skipped.
    """
    from jaxmatte.data.folders import open_folders

    if predictor.output != "trimap":
        raise ValueError(f"{predictor.family} predicts {predictor.output}, not trimaps")
    root = Path(root)
    name = name or root.resolve().name
    folders = open_folders(root, validate=False, trimap_dir=trimap_dir, input_mask_dir=mask_dir)
    problems = [Problem(path.name, reason) for path, reason in folders.problems]
    scores = _Accumulator()
    sources: set[str] = set()
    chunk_size = max(chunk_size, predictor.batch_size)

    def flush(items: list[tuple[str, np.ndarray, Any]]) -> None:
        logits = predictor.canvas_outputs([item[2] for item in items])
        for (stem, gt, prepared), canvas in zip(items, logits, strict=True):
            pred = predictor.finish(canvas, prepared[1])
            if save_dir is not None:
                write_png(Path(save_dir) / f"{stem}.png", labels_to_png(pred))
            pred_canvas = np.argmax(canvas, axis=-1).astype(np.uint8)
            scores.add(stem, pred, gt, pred_canvas, predictor.policy.mask(gt))

    items: list[tuple[str, np.ndarray, Any]] = []
    for index, stem in enumerate(folders.names):
        try:
            record = folders[index]
        except ImageReadError as error:
            problems.append(Problem(stem, f"unreadable {error.path.name}: {error.problem}"))
            continue
        image = record["image"]
        gt = record_labels(record, unknown_band)
        if gt.shape != image.shape[:2]:
            problems.append(Problem(stem, f"GT labels {gt.shape[1]}x{gt.shape[0]} differ from the image size"))
            continue
        sources.add("trimap" if "trimap" in record else "alpha")
        mask = None
        if predictor.needs_mask:
            mask = record["input_mask"] if "input_mask" in record else mask_from_alpha(record["mask"])
        items.append((stem, gt, predictor.prepare(image, mask)))
        if len(items) >= chunk_size:
            flush(items)
            items = []
    if items:
        flush(items)
    described = {"trimap": "trimap files", "alpha": f"alpha (unknown band {unknown_band} px)"}
    gt_labels = " + ".join(described[source] for source in sorted(sources, reverse=True)) or "none"
    policy = predictor.policy
    return scores.report(name, problems, gt_labels=gt_labels, canvas=f"{policy.kind} {policy.size}", compat_exact=True)


# ------------------------------------------------------------------------------------------------ reports


def format_trimap_table(reports: Sequence[TrimapReport]) -> str:
    """Two aligned tables (4 decimals), one row per dataset: the clean block, then the compat block."""
    clean = _table(reports, TRIMAP_KEYS, TRIMAP_KEYS)
    short = tuple(key.replace("SegTrimap_", "") for key in COMPAT_KEYS)
    canvases = sorted({report.canvas for report in reports})
    compat = _table(reports, COMPAT_KEYS, short)
    exact = all(report.compat_exact for report in reports)
    note = f"compat block: the original's row-IoU on the {', '.join(canvases)} canvas"
    note += "" if exact else " (from saved trimaps: approximate)"
    return f"{clean}\n\n{compat}\n{note}"


def _table(reports: Sequence[TrimapReport], keys: Sequence[str], labels: Sequence[str]) -> str:
    header = ["dataset", "images", *labels]
    rows = [[r.name, str(r.images), *(_format(r.summary.get(key)) for key in keys)] for r in reports]
    widths = [max(len(line[column]) for line in [header, *rows]) for column in range(len(header))]
    lines = []
    for line in [header, *rows]:
        cells = zip(line, widths, strict=True)
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells)))
    return "\n".join(lines)


def _format(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if math.isfinite(value) else "nan"


def _json_number(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def write_trimap_json(
    path: str | os.PathLike, reports: Sequence[TrimapReport], merge: bool = True, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``{dataset: {...}}``; with `merge`, the other datasets of an existing file are kept (same name replaced).
    `extra` entries (e.g. ``{"prediction": ...}``) go into every dataset's object."""
    path = Path(path)
    data: dict[str, Any] = read_json_object(path) if merge and path.exists() else {}
    data.update({report.name: {**report.as_json(), **(extra or {})} for report in reports})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    return path


def write_trimap_csv(path: str | os.PathLike, report: TrimapReport) -> Path:
    """One row per evaluated image: name, GT size, the image's clean metrics (empty cells for NaN)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["name", "height", "width", *TRIMAP_KEYS]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in report.rows:
            writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})
    return path
