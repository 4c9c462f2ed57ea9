"""Validation suites: the matting suite's regions and metric set, equal to direct evaluations."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmatte.data.synthetic_matting import matting_sample, trimap_from_alpha
from jaxmatte.metrics.dis import dis_image_stats, summarize_dis
from jaxmatte.metrics.matting import MATTING_KEYS, matting_image_metrics, summarize_matting
from jaxmatte.validation import SUITES


def records(count: int = 3, soft: bool = True):
    rng = np.random.default_rng(0)
    out = []
    for index in range(count):
        alpha = matting_sample(np.random.default_rng(index), 40, 56).alpha_u8
        gt = alpha if soft else np.where(alpha > 127, 255, 0).astype(np.uint8)
        noise = rng.normal(0, 30, gt.shape)
        pred = np.clip(gt.astype(float) + noise, 0, 255).astype(np.uint8)[::2, ::2]  # half size: resized to GT
        out.append((pred, {"name": f"im{index}", "mask": gt, "trimap": trimap_from_alpha(gt)}))
    return out


def _at_gt(pred, gt):
    import cv2

    return cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)


@pytest.mark.parametrize("region", ["whole", "unknown"])
def test_matting_suite_regions(region):
    suite = SUITES["matting"](region=region)
    data = records()
    for pred, record in data:
        suite.add(pred, record)
    summary = suite.summary()
    pairs = [(_at_gt(pred, r["mask"]), r["mask"], r["trimap"] if region == "unknown" else None) for pred, r in data]
    expected = summarize_matting([matting_image_metrics(p, g, t) for p, g, t in pairs])
    assert {key: summary[key] for key in MATTING_KEYS} == pytest.approx(expected, rel=1e-12)
    plain = np.mean([np.abs(p.astype(float) - g).mean() / 255 for p, g, _ in pairs])
    assert summary["MAE"] == pytest.approx(plain, rel=1e-12)
    assert "maxFm" not in summary  # soft GT


def test_matting_suite_adds_dis_for_binary_gt_and_needs_trimaps_for_unknown():
    suite = SUITES["matting"]()
    data = records(soft=False)
    for pred, record in data:
        suite.add(pred, record)
    summary = suite.summary()
    dis = summarize_dis([dis_image_stats(_at_gt(p, r["mask"]), r["mask"]) for p, r in data])
    assert summary["maxFm"] == pytest.approx(dis["maxFm"]) and summary["HCE"] == pytest.approx(dis["HCE"])
    pred, record = data[0]
    del record["trimap"]
    with pytest.raises(ValueError, match="im0: data.val_region='unknown' needs a trimap"):
        SUITES["matting"](region="unknown").add(pred, record)
    with pytest.raises(ValueError, match="val_region"):
        SUITES["matting"](region="trimap")
