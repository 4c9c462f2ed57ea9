"""Config sections that only TwinSwin / TSR runs read, and the demo settings both recipes share
(``configs/tsr.py``, ``configs/twinswin.py``)."""

from __future__ import annotations

import ml_collections

from jaxmatte.train.config import base_config


def tsr_config(family: str) -> ml_collections.ConfigDict:
    """`base_config(family)` with the ``teacher`` and ``loss`` sections (DIS5K recipe values)."""
    c = base_config(family)
    c.teacher = ml_collections.ConfigDict()
    # off | random (torch-style init from `seed`, frozen) | pretrained (first trained to reconstruct masks, then
    # frozen; jaxmatte/models/tsr/teacher.py)
    c.teacher.mode = "off"
    c.teacher.seed = 0
    c.teacher.weight = 0.2
    c.teacher.path = ""  # pretrained: reuse this saved teacher directory instead of training one
    c.teacher.steps = 2000
    c.teacher.batch_size = 8
    c.teacher.lr = 3e-3
    c.teacher.weight_decay = 1e-4

    c.loss = ml_collections.ConfigDict()
    c.loss.w_l1 = 1.0
    c.loss.w_grad = 1.0
    c.loss.w_ssim = 0.5
    c.loss.clamp_refined = False
    c.loss.mode = "matting"  # twinswin only: matting | locator
    return c


def demo_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The `demo` variant: a small model on synthetic DIS-style data, a few minutes on two CPU cores (jit compile
    included)."""
    m = config.model
    m.preset = "tiny"
    b = m.backbone
    b.embed_dim = 24
    b.depths = (1, 1, 2, 1)
    b.num_heads = (1, 2, 4, 8)
    b.window_size = 6
    b.drop_path_rate = 0.0
    m.safe_size = 192
    m.decoder_channels = (64, 32, 16)
    m.head_channels = (16, 8)
    if "refiner" in m:
        m.refiner.mid_channels = 16
        m.refiner.num_blocks = 1
    d = config.data
    d.synthetic_root = "runs/data/synthetic"
    d.synthetic_train = 96
    d.synthetic_val = 16
    d.size = 192
    d.val_batch_size = 8
    o = config.optim
    o.lr = 1e-3
    o.eta_min = 1e-5
    o.weight_decay = 1e-4
    o.batch_size = 8
    o.accum_steps = 1
    o.epochs = 12
    o.warmup_epochs = 0
    config.teacher.steps = 600  # used with --config.teacher.mode=pretrained
    t = config.train
    t.compute_dtype = "float32"
    t.log_every = 4
    t.val_at_start = True
    return config
