"""The ``loss`` section DINOv3-matting runs read, and the shared settings of the recipe's variants
(``configs/dinomatte.py``)."""

from __future__ import annotations

import ml_collections

from jaxmatte.train.config import base_config


def dinomatte_config() -> ml_collections.ConfigDict:
    """`base_config("dinomatte")` with the spec's loss weights and training recipe (AdamW 1e-4, weight decay 0.01,
    per-epoch cosine to 1e-7 over 50 epochs, batch 8, clip 1.0, fp32 on CPU), matting data settings."""
    c = base_config("dinomatte")
    c.model.preset = "small"
    c.loss = ml_collections.ConfigDict()
    c.loss.w_charbonnier = 1.0
    c.loss.w_gradient = 0.5
    c.loss.w_laplacian = 0.1
    c.loss.use_charbonnier = True
    c.loss.w_boundary = 0.0  # boundary-aware smooth L1, off in the original configuration

    d = c.data
    d.train_roots = ["datasets/train"]
    d.val_roots = ["datasets/val"]
    d.synthetic = "matting"
    d.size = 224
    d.policy = "letterbox"
    d.mask_resample = "linear"  # soft alpha
    a = d.augmentation  # horizontal flip, mild photometric jitter; no shift-scale (the original has none)
    a.p_shift_scale = 0.0
    a.p_flip = 0.5
    a.p_brightness_contrast = 0.3
    a.brightness = 0.1
    a.contrast = 0.1
    a.mask_interpolation = "linear"

    o = c.optim
    o.lr = 1e-4
    o.eta_min = 1e-7
    o.weight_decay = 0.01
    o.epochs = 50
    o.batch_size = 8
    o.accum_steps = 1
    o.clip_norm = 1.0
    return c


def faithful_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The original system: faithful decoder, PIL bilinear stretch to 224 (soft alpha resized the same way), the
    backbone's RoPE rescale active in train mode and the original padding rule."""
    config.model.preset = "faithful"
    d = config.data
    d.policy = "stretch"
    d.size = 224
    d.resample = "pil_bilinear"
    d.mask_resample = "linear"
    return config


def detail_settings(config: ml_collections.ConfigDict, size: int = 448) -> ml_collections.ConfigDict:
    """jaxmatte's multi-scale detail decoder at `size` (aspect kept by letterboxing)."""
    config.model.preset = "small_detail"
    config.data.policy = "letterbox"
    config.data.size = size
    return config


def demo_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A random-weight DINOv3-S on the embedded soft-alpha synthetic data, minutes on two CPU cores. Both decoders'
    demos read the same generated folder (256-384 px images), so their validation numbers compare."""
    d = config.data
    d.synthetic_root = "runs/data/synthetic_matting"
    d.synthetic_train = 64
    d.synthetic_val = 12
    d.synthetic_size = (256, 384)
    d.val_batch_size = 4
    o = config.optim
    o.lr = 1e-3
    o.eta_min = 1e-5
    o.epochs = 8
    o.batch_size = 8
    t = config.train
    t.compute_dtype = "float32"
    t.log_every = 4
    t.val_at_start = True
    return config
