"""SegTrimap: trimap segmentation (background / unknown / foreground) from an image and a coarse object mask, with a
SimpleClick-style windowed MAE ViT, a SimpleFPN neck and an all-MLP head."""

from jaxmatte.models.segtrimap.modeling import (
    CLASS_NAMES,
    NUM_CLASSES,
    PRESETS,
    UPSAMPLE_MODES,
    SegTrimap,
    SegTrimapConfig,
    SimpleFPN,
    TrimapHead,
    forward,
    logits_at,
    without_pos_embed,
)
from jaxmatte.models.segtrimap.system import SEGTRIMAP, SegTrimapLoss

__all__ = [
    "SEGTRIMAP",
    "SegTrimapLoss",
    "CLASS_NAMES",
    "NUM_CLASSES",
    "PRESETS",
    "UPSAMPLE_MODES",
    "SegTrimap",
    "SegTrimapConfig",
    "SimpleFPN",
    "TrimapHead",
    "forward",
    "logits_at",
    "without_pos_embed",
]
