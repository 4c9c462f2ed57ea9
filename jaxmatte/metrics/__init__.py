"""Evaluation metrics in NumPy/SciPy/OpenCV (no JAX).

`dis`: DIS / salient-object metrics (agree with pysodmetrics 1.6.2); `matting`: the official Composition-1k matting
metrics; `compat`: the original systems' own numbers under distinct names.
"""

from jaxmatte.metrics.compat import COMPAT_KEYS, compat_image_metrics, summarize_compat
from jaxmatte.metrics.dis import (
    DIS_KEYS,
    HCE_BINARIZE_RULES,
    DISImageStats,
    dis_image_row,
    dis_image_stats,
    evaluate_dis_pairs,
    resize_to_gt,
    summarize_dis,
)
from jaxmatte.metrics.matting import MATTING_KEYS, matting_image_metrics, matting_region, summarize_matting

__all__ = [
    "COMPAT_KEYS",
    "DIS_KEYS",
    "HCE_BINARIZE_RULES",
    "MATTING_KEYS",
    "DISImageStats",
    "compat_image_metrics",
    "dis_image_row",
    "dis_image_stats",
    "evaluate_dis_pairs",
    "matting_image_metrics",
    "matting_region",
    "resize_to_gt",
    "summarize_compat",
    "summarize_dis",
    "summarize_matting",
]
