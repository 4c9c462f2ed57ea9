"""Validation suites: how a system's predictions on the validation split are scored during training.

A suite collects one image at a time (the uint8 prediction at the ground truth's original resolution and the
dataset record) and summarises the split. A system names its suite and the metric that picks ``best/``
(`jaxmatte.registry.System`); `SUITES` is the table the registry checks against.

- ``dis``: the DIS metrics (maxFm, wFmeasure, MAE, Smeasure, E-measures, HCE), GT > 128 foreground;
- ``matting``: MAE (of [0, 1] values) and the official SAD, MSE, Grad, Conn over the whole image, or over the unknown
  region of a record's trimap; the DIS metrics as well when the ground truth is binary (soft fraction at most
  `jaxmatte.evaluation.SOFT_GT_FRACTION`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from jaxmatte.metrics.dis import DIS_KEYS, dis_image_stats, resize_to_gt, summarize_dis
from jaxmatte.metrics.matting import MATTING_KEYS, matting_image_metrics, summarize_matting


class DISValidation:
    metrics: ClassVar[tuple[str, ...]] = DIS_KEYS

    def __init__(self) -> None:
        self.stats: list[Any] = []

    def add(self, prediction: np.ndarray, record: dict[str, Any]) -> None:
        self.stats.append(dis_image_stats(resize_to_gt(prediction, record["mask"]), record["mask"]))

    def summary(self) -> dict[str, float]:
        return summarize_dis(self.stats)


class MattingValidation:
    metrics: ClassVar[tuple[str, ...]] = ("MAE", *MATTING_KEYS, *(k for k in DIS_KEYS if k != "MAE"))

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.stats: list[Any] = []
        self.soft: list[float] = []

    def add(self, prediction: np.ndarray, record: dict[str, Any]) -> None:
        from jaxmatte.evaluation import soft_fraction

        gt = record["mask"]
        gt = gt[..., 0] if gt.ndim == 3 else gt
        prediction = resize_to_gt(prediction, gt)
        trimap = record.get("trimap")
        if trimap is not None and trimap.ndim == 3:
            trimap = trimap[..., 0]
        self.rows.append(matting_image_metrics(prediction, gt, trimap))
        self.stats.append(dis_image_stats(prediction, gt))
        self.soft.append(soft_fraction(gt))

    def summary(self) -> dict[str, float]:
        from jaxmatte.evaluation import SOFT_GT_FRACTION

        dis = summarize_dis(self.stats)
        values = {"MAE": dis["MAE"], **summarize_matting(self.rows)}
        if float(np.mean(self.soft)) <= SOFT_GT_FRACTION:
            values.update({key: value for key, value in dis.items() if key != "MAE"})
        return values


SUITES: dict[str, type] = {"dis": DISValidation, "matting": MattingValidation}
