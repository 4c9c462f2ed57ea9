"""Validation suites: how a system's predictions on the validation split are scored during training.

A suite collects one image at a time (the uint8 prediction at the ground truth's original resolution and the
dataset record) and summarises the split. A system names its suite and the metric that picks ``best/``
(`jaxmatte.registry.System`); `SUITES` is the table the registry checks against.

- ``dis``: the DIS metrics (maxFm, wFmeasure, MAE, Smeasure, E-measures, HCE), GT > 128 foreground;
- ``matting``: `jaxmatte.evaluation`'s matting set: the plain MAE of [0, 1] values and the official SAD, MSE, Grad, Conn
  over the whole image (``region="whole"``, the trimap-free protocol) or the unknown region of each record's trimap
  (``region="unknown"``, `data.val_region`); the DIS metrics as well when the ground truth is binary (soft fraction
  at most `jaxmatte.evaluation.SOFT_GT_FRACTION`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from jaxmatte.evaluation import MATTING_TABLE_KEYS, Evaluation, evaluate_arrays, summarize
from jaxmatte.metrics.dis import DIS_KEYS, dis_image_stats, resize_to_gt, summarize_dis

REGIONS = ("whole", "unknown")


class DISValidation:
    metrics: ClassVar[tuple[str, ...]] = DIS_KEYS

    def __init__(self, region: str = "whole") -> None:
        del region  # the DIS metrics cover the whole image
        self.stats: list[Any] = []

    def add(self, prediction: np.ndarray, record: dict[str, Any]) -> None:
        self.stats.append(dis_image_stats(resize_to_gt(prediction, record["mask"]), record["mask"]))

    def summary(self) -> dict[str, float]:
        return summarize_dis(self.stats)


class MattingValidation:
    metrics: ClassVar[tuple[str, ...]] = MATTING_TABLE_KEYS

    def __init__(self, region: str = "whole") -> None:
        if region not in REGIONS:
            raise ValueError(f"data.val_region must be one of {REGIONS}, got {region!r}")
        self.region = region
        self.results: list[Any] = []

    def add(self, prediction: np.ndarray, record: dict[str, Any]) -> None:
        gt = record["mask"]
        gt = gt[..., 0] if gt.ndim == 3 else gt
        name = str(record.get("name", len(self.results)))
        trimap = None
        if self.region == "unknown":
            trimap = record.get("trimap")
            if trimap is None:
                raise ValueError(
                    f"validation image {name}: data.val_region='unknown' needs a trimap (data.trimap_dir, or a "
                    "trimaps/ folder in the validation root)"
                )
            trimap = trimap[..., 0] if trimap.ndim == 3 else trimap
        self.results.append(evaluate_arrays(name, prediction, gt, trimap, with_matting=True, metrics="matting"))

    def summary(self) -> dict[str, float]:
        return summarize("validation", Evaluation(self.results, [], "whole", metrics="matting")).summary


SUITES: dict[str, type] = {"dis": DISValidation, "matting": MattingValidation}
