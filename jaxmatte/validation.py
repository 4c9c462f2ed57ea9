"""Validation suites: how a system's predictions on the validation split are scored during training.

A suite collects one image at a time (the uint8 prediction at the ground truth's original resolution and the
dataset record) and summarises the split. A system names its suite and the metric that picks ``best/``
(`jaxmatte.registry.System`); `SUITES` is the table the registry checks against.

- ``dis``: the DIS metrics (maxFm, wFmeasure, MAE, Smeasure, E-measures, HCE), GT > 128 foreground;
- ``matting``: `jaxmatte.evaluation`'s matting set: the plain MAE of [0, 1] values and the official SAD, MSE, Grad, Conn
  over the whole image (``region="whole"``, the trimap-free protocol) or the unknown region of each record's trimap
  (``region="unknown"``, `data.val_region`); the DIS metrics as well when the ground truth is binary (soft fraction
  at most `jaxmatte.evaluation.SOFT_GT_FRACTION`);
- ``trimap``: the clean trimap block of `jaxmatte.metrics.trimap` (pooled IoU per class, mIoU, unknown precision /
  recall / F1, swap and miss rates) of predicted class ids against the record's trimap (or the trimap derived from
  its alpha, `data.unknown_band` pixels wide), at the original resolution.

`make_suite(name, data_config)` builds a suite with the run's data settings.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from jaxmatte.data.trimaps import DEFAULT_UNKNOWN_BAND, record_labels
from jaxmatte.evaluation import MATTING_TABLE_KEYS, Evaluation, evaluate_arrays, summarize
from jaxmatte.metrics.dis import DIS_KEYS, dis_image_stats, resize_to_gt, summarize_dis
from jaxmatte.metrics.trimap import TRIMAP_KEYS, TrimapMetrics

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


class TrimapValidation:
    metrics: ClassVar[tuple[str, ...]] = TRIMAP_KEYS

    def __init__(self, region: str = "whole", unknown_band: int = DEFAULT_UNKNOWN_BAND) -> None:
        del region  # trimap metrics cover the whole image
        self.unknown_band = int(unknown_band)
        self.accumulator = TrimapMetrics()

    def add(self, prediction: np.ndarray, record: dict[str, Any]) -> None:
        labels = record_labels(record, self.unknown_band)
        if prediction.shape != labels.shape:
            name = record.get("name", "?")
            raise ValueError(f"validation image {name}: prediction {prediction.shape} vs labels {labels.shape}")
        self.accumulator.add(prediction, labels)

    def summary(self) -> dict[str, float]:
        return self.accumulator.summary()


SUITES: dict[str, type] = {"dis": DISValidation, "matting": MattingValidation, "trimap": TrimapValidation}


def make_suite(name: str, data: Any) -> Any:
    """The suite `name` with the run's ``data`` settings (`val_region`, and `unknown_band` where it applies)."""
    if name not in SUITES:
        raise KeyError(f"unknown validation suite {name!r}; known: {sorted(SUITES)}")
    if name == "trimap":
        return TrimapValidation(unknown_band=int(data.get("unknown_band", DEFAULT_UNKNOWN_BAND)))
    return SUITES[name](region=data.val_region)
