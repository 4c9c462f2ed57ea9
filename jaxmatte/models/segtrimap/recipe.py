"""The sections SegTrimap runs read (``loss``, ``labels``, ``augmentation``) and the shared settings of the recipe's
variants (``configs/segtrimap.py``)."""

from __future__ import annotations

import dataclasses

import ml_collections

from jaxmatte.data.trimaps import DEFAULT_UNKNOWN_BAND
from jaxmatte.models.segtrimap.data import SegTrimapAugment
from jaxmatte.train.config import base_config


def segtrimap_config() -> ml_collections.ConfigDict:
    """`base_config("segtrimap")` with the spec's headline recipe (§9): ViT-H/14 at 448, NFL + 0.1 DT, Adam 1e-4 (no
    weight decay, no clipping), MultiStepLR [50, 55] x0.1 per epoch, 55 epochs, batch 32; letterbox with nearest
    masks; the §7.1 augmentation; padding ignored by the loss."""
    c = base_config("segtrimap")
    c.model.preset = "huge_448"
    c.loss = ml_collections.ConfigDict()
    c.loss.kind = "nfl_dt"  # nfl_dt | nfl | ce | ce_nfl
    c.loss.w_nfl = 1.0
    c.loss.w_dt = 0.1
    c.loss.w_ce = 1.0
    c.loss.gamma = 2.0
    c.labels = ml_collections.ConfigDict()
    c.labels.ignore_padding = True  # False: padding is background in the loss (the original)
    c.labels.unknown_band = DEFAULT_UNKNOWN_BAND  # px, trimaps derived from alpha when a record has none
    c.augmentation = ml_collections.ConfigDict(
        {f.name: _plain(getattr(SegTrimapAugment(), f.name)) for f in dataclasses.fields(SegTrimapAugment)}
    )

    d = c.data
    d.train_roots = ["datasets/train"]
    d.val_roots = ["datasets/val"]
    d.synthetic = "matting"
    d.size = 448
    d.policy = "letterbox"
    d.mask_resample = "nearest"
    d.unknown_band = DEFAULT_UNKNOWN_BAND  # validation labels of alpha-only records

    o = c.optim
    o.lr = 1e-4
    o.schedule = "multistep"
    o.milestones = (50, 55)
    o.gamma = 0.1
    o.weight_decay = 0.0
    o.clip_norm = 0.0
    o.epochs = 55
    o.batch_size = 32
    o.accum_steps = 1
    return c


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def faithful_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The original's training quirk: letterbox padding counts as background in the loss."""
    config.labels.ignore_padding = False
    return config


def layerwise_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The original's `--layerwise-decay` groups (decay 0.75 per block, weight decay 0.02 on weight matrices); the
    mask patch embedding joins the embedding layer instead of being left out."""
    o = config.optim
    o.layer_decay = 0.75
    o.weight_decay = 0.02
    o.weight_decay_on = "matrices"
    return config


def demo_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A 4-block ViT-S-wide SegTrimap at 224 on the embedded soft-alpha synthetic data (input masks alpha >= 30,
    trimaps from the alpha's unknown band), minutes on two CPU cores. The unknown band is a few pixels wide at 224,
    so the DT term weighs 0.5 (the headline's 0.1 leaves the band under-predicted in so short a run), with gradient
    clipping at norm 1 for the higher learning rate."""
    config.model.preset = "small_224"
    d = config.data
    d.size = 224
    d.synthetic_root = "runs/data/synthetic_matting"
    d.synthetic_train = 64
    d.synthetic_val = 12
    d.synthetic_size = (256, 384)
    d.val_batch_size = 4
    config.labels.unknown_band = 5
    d.unknown_band = 5
    config.loss.w_dt = 0.5
    o = config.optim
    o.clip_norm = 1.0
    o.lr = 5e-4
    o.epochs = 14
    o.milestones = (11,)
    o.batch_size = 8
    t = config.train
    t.compute_dtype = "float32"
    t.log_every = 4
    t.val_at_start = True
    return config
