"""Run logs: a tqdm progress bar, CSV files, a loss-curve PNG, sample grids, TensorBoard events.

Files in the workdir: ``train.csv`` (step, epoch, lr, images/s, loss terms of the step, grad_norm, ``skipped``: the
non-finite steps skipped so far in the run), ``val.csv`` (step, epoch, metrics),
``loss.png`` (training loss and validation metric against the step), ``samples/step_<n>.png`` (rows of image | ground
truth | prediction), ``tensorboard/`` (event files with the same training terms as ``train/<term>`` and
metrics as ``val/<metric>``). A resumed run first drops what its logs hold beyond the restored step
(`truncate_logs`), so replayed steps appear once.
"""

from __future__ import annotations

import csv
import math
import os
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tensorboardX import SummaryWriter

from jaxmatte.data.io import write_png


class RunLog:
    """Progress and metric logging of one training run (appends when resuming)."""

    def __init__(self, workdir: str | Path, *, total_steps: int, start_step: int, progress: bool = True):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.total_steps = total_steps
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        self._files = 0
        self.board = self._writer()
        self._start = time.perf_counter()
        self._last_time = self._start
        self._last_step = start_step

    def _append(self, name: str, row: dict[str, Any]) -> None:
        append_csv(self.workdir / name, row)

    def train(
        self, step: int, epoch: int, lr: float, batch_size: int, terms: dict[str, float], skipped: int = 0
    ) -> None:
        """Log training terms at `step` (the number of micro-batches done); `skipped`: non-finite steps so far."""
        now = time.perf_counter()
        rate = (step - self._last_step) * batch_size / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        terms = {key: value for key, value in terms.items() if key != "nonfinite"}  # `skipped` counts them
        row = {"step": step, "epoch": epoch, "lr": lr, "images_per_s": round(rate, 3), **terms, "skipped": skipped}
        self._append("train.csv", row)
        if self.bar is not None:
            postfix = {"loss": f"{terms.get('total', math.nan):.4f}", "img_s": f"{rate:.1f}"}
            if skipped:
                postfix["skipped"] = str(skipped)
            self.bar.set_postfix(postfix, refresh=False)
        for key, value in terms.items():
            if math.isfinite(value):  # non-finite steps show in train/skipped (and in train.csv as nan)
                self.board.add_scalar(f"train/{key}", value, step)
        self.board.add_scalar("train/lr", lr, step)
        self.board.add_scalar("train/skipped", skipped, step)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def validation(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        self._append("val.csv", {"step": step, "epoch": epoch, **metrics})
        for key, value in metrics.items():
            self.board.add_scalar(f"val/{key}", value, step)
        self.message(f"step {step} (epoch {epoch}) val " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def _writer(self) -> SummaryWriter:
        # pid and a counter in the name: two writers opened within a second must not share a file
        self._files += 1
        suffix = f".{os.getpid()}.{self._files:06d}"
        return SummaryWriter(str(self.workdir / "tensorboard"), filename_suffix=suffix)

    def flush(self) -> None:
        """Get every TensorBoard event logged so far onto disk (before a checkpoint, so that a run killed later loses
        none it will not replay). tensorboardX's own flush leaves events queued, so the writer is closed (which
        drains the queue) and a new file started."""
        self.board.close()
        self.board = self._writer()

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def plot(self, metric: str) -> Path | None:
        """``loss.png`` from the CSV files: training loss (left) and validation `metric` (right)."""
        return plot_curves(self.workdir, metric)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.board.close()


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _panel(title: str, xs: Sequence[float], ys: Sequence[float], size=(480, 360)) -> np.ndarray:
    """A white BGR panel with a polyline of (xs, ys), axis ranges printed."""
    width, height = size
    panel = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 60, 15, 30, 35
    cv2.rectangle(panel, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    cv2.putText(panel, title, (left, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    points = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
    if not points:
        return panel
    x = np.array([p[0] for p in points], np.float64)
    y = np.array([p[1] for p in points], np.float64)
    x0, x1 = float(x.min()), float(max(x.max(), x.min() + 1))
    y0, y1 = float(y.min()), float(y.max())
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    px = left + (x - x0) / (x1 - x0) * (width - left - right)
    py = height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)
    line = np.stack([px, py], axis=1).round().astype(np.int32)
    cv2.polylines(panel, [line], False, (200, 80, 0), 2, cv2.LINE_AA)
    if len(line) < 20:
        for point in line:
            cv2.circle(panel, (int(point[0]), int(point[1])), 3, (200, 80, 0), -1, cv2.LINE_AA)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for value, row in ((y1, top + 10), (y0, height - bottom)):
        cv2.putText(panel, f"{value:.3g}", (5, row), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for value, col in ((x0, left), (x1, width - right - 40)):
        cv2.putText(panel, f"{value:.0f}", (col, height - 15), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return panel


def plot_curves(workdir: str | Path, metric: str) -> Path | None:
    workdir = Path(workdir)
    train_rows, val_rows = read_csv(workdir / "train.csv"), read_csv(workdir / "val.csv")
    if not train_rows and not val_rows:
        return None

    def series(rows, key):
        pairs = [(float(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    left = _panel("train loss (total)", *series(train_rows, "total"))
    right = _panel(f"val {metric}", *series(val_rows, metric))
    image = np.concatenate([left, right], axis=1)
    return write_png(workdir / "loss.png", np.ascontiguousarray(image[..., ::-1]))


def sample_grid(
    path: str | Path, images: Sequence[np.ndarray], gts: Sequence[np.ndarray], preds: Sequence[np.ndarray]
) -> Path:
    """PNG with one row per sample: RGB image | ground truth | prediction (uint8, resized to a 192 px row)."""
    rows = []
    row_height = 192
    for image, gt, pred in zip(images, gts, preds, strict=True):
        scale = row_height / image.shape[0]
        width = max(1, round(image.shape[1] * scale))

        def fit(array, interpolation=cv2.INTER_LINEAR, width=width):
            resized = cv2.resize(array, (width, row_height), interpolation=interpolation)
            return np.repeat(resized[..., None], 3, axis=2) if resized.ndim == 2 else resized

        gap = np.full((row_height, 4, 3), 255, np.uint8)
        rows.append(np.concatenate([fit(image), gap, fit(gt), gap, fit(pred)], axis=1))
    width = max(row.shape[1] for row in rows)
    padded = [np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
    return write_png(path, np.concatenate(padded, axis=0))


def _rewrite_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    """Replace the CSV file `path` by `rows` under `fields`, atomically (a killed rewrite leaves the old file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append `row` to the CSV file `path` (header first when new; rewritten with a wider header for new columns)."""
    fields = list(row)
    if path.exists():
        with path.open() as handle:
            header = next(csv.reader(handle), None)
        if header:
            fields = header + [key for key in row if key not in header]
            if fields != header:  # new columns: rewrite with the wider header
                with path.open() as handle:
                    rows = list(csv.DictReader(handle))
                _rewrite_csv(path, fields, rows)
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow(row)


# ---------------------------------------------------------------------------------------------------------------------
# Resume


def truncate_logs(workdir: str | Path, step: int) -> None:
    """Drop the rows of ``train.csv`` / ``val.csv`` and the TensorBoard scalars after `step` (a resumed run replays
    those steps), and rows cut short by a crash."""
    workdir = Path(workdir)
    for name in ("train.csv", "val.csv"):
        path = workdir / name
        if not path.exists():
            continue
        with path.open() as handle:
            reader = csv.DictReader(handle)
            fields, rows = reader.fieldnames or [], list(reader)
        kept = [row for row in rows if _row_step(row) is not None and _row_step(row) <= step]
        if len(kept) != len(rows):
            _rewrite_csv(path, list(fields), kept)
    board = workdir / "tensorboard"
    if board.is_dir():
        for path in sorted(board.glob("events.out.tfevents.*")):
            _truncate_events(path, step)


def _row_step(row: dict[str, Any]) -> int | None:
    if any(value is None for value in row.values()) or None in row:  # a line cut short (or overlong)
        return None
    try:
        return int(row["step"])
    except (KeyError, TypeError, ValueError):
        return None


def _truncate_events(path: Path, step: int) -> None:
    """Rewrite a TensorBoard event file without its summaries after `step` (records copied byte for byte; a record
    cut short ends the file)."""
    from tensorboardX.proto import event_pb2

    data = path.read_bytes()
    kept, offset, changed = [], 0, False
    while offset + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        end = offset + 12 + length + 4
        if end > len(data):
            break
        try:
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
        except Exception:  # a damaged record: drop it and what follows
            break
        if event.HasField("summary") and event.step > step:
            changed = True
        else:
            kept.append(data[offset:end])
        offset = end
    if changed or offset != len(data):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(b"".join(kept))
        os.replace(tmp, path)
