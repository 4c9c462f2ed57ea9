"""Run configs of the Matting Prune stages (spec §6 and §8) and of DIM teacher training (§1.2), on the shared base.

- `prune_settings`: stage 1, the full-width student (the teacher's tree) from PyTorch's default initialisation, BN
  scales 0.5 with frozen zero biases, the L1 sub-gradient 1e-4 (encoder) / 1e-5 (decoder) on the scales, alpha + KD +
  SPKD losses, Adam 0.01 without decay, elementwise gradient clamp +-5, batch 1, 15 epochs; then the pruning cfg at
  rate 0.5.
- `retrain_settings`: stage 2, the pruned student (`pruning.cfg`) from a fresh initialisation, the same losses and
  optimiser without the sparsity term, 30 epochs.
- `teacher_settings`: the DIM teacher itself on the alpha-prediction loss only (a stand-in for the foamliu recipe, whose
  SGD + reload-on-plateau schedule is not reproduced: Adam, cosine).
"""

from __future__ import annotations

import ml_collections

from jaxmatte.train.config import base_config

AUGMENT_FIELDS = {"crop_sizes": (320, 480, 640), "out_size": 320, "faithful_trimap": False, "jitter": 0.125}
# validation batches hold one whole image (native resolution)


def dim_config(family: str = "dim") -> ml_collections.ConfigDict:
    """The shared base with the sections the DIM system reads (see `jaxmatte.models.dim.system`)."""
    c = base_config(family)
    c.model.preset = "teacher"
    c.distill = ml_collections.ConfigDict()
    c.distill.teacher = ""  # a converted DIM teacher directory; "" trains without distillation
    c.distill.w_alpha = 1.0
    c.distill.w_kd = 1.0
    c.distill.w_spkd = 1.0
    c.distill.spkd = "fixed"  # fixed: the four layer pairs summed | faithful: the last pair only (the original)
    c.sparsity = ml_collections.ConfigDict()
    c.sparsity.enabled = False
    c.sparsity.gamma_init = 0.5
    c.sparsity.encoder = 1e-4  # L1 sub-gradient coefficients (10 x and 1 x the original's `bns` 1e-5)
    c.sparsity.decoder = 1e-5
    c.sparsity.prune_rate = 0.5
    c.pruning = ml_collections.ConfigDict()
    c.pruning.cfg = ""  # stage 2: pruned_cfg.json, the prune stage's run directory, or an original pruned.tar
    c.augmentation = ml_collections.ConfigDict(
        {k: list(v) if isinstance(v, tuple) else v for k, v in AUGMENT_FIELDS.items()}
    )

    d = c.data
    d.train_roots = ["datasets/dim/train"]  # fg/ + alpha/ + bg/ (composited on the fly), or image/ + alpha/ [+ trimap/]
    d.val_roots = ["datasets/dim/val"]
    d.size = 32  # the native policy: whole images padded to a multiple of 32 (training crops already are)
    d.policy = "native"
    d.mask_resample = "nearest"
    d.val_region = "unknown"
    d.backgrounds_per_fg = 100
    d.synthetic = "composition"

    o = c.optim
    o.lr = 0.01
    o.schedule = "cosine"
    o.eta_min = 0.01  # constant: the original's Adam runs have no decay
    o.weight_decay = 0.0
    o.clip_norm = 0.0
    o.clip_value = 5.0
    o.batch_size = 1
    o.accum_steps = 1
    o.epochs = 15
    c.train.compute_dtype = "float32"
    return c


def prune_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config.sparsity.enabled = True
    config.optim.epochs = 15
    return config


def retrain_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config.model.family = "dim_student"
    config.sparsity.enabled = False
    config.optim.epochs = 30
    return config


def teacher_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config.distill.teacher = ""
    config.optim.lr = 1e-4
    config.optim.eta_min = 1e-6
    config.optim.batch_size = 8
    config.optim.epochs = 100
    return config


def faithful_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The original's quirks: last-layer-only SPKD and one-iteration trimaps."""
    config.distill.spkd = "faithful"
    config.augmentation.faithful_trimap = True
    return config


def demo_settings(config: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
    """CPU-sized runs on the embedded synthetic foregrounds and backgrounds: 96 px crops, a few minutes per stage."""
    d = config.data
    d.synthetic_root = "runs/data/synthetic_composition"
    d.synthetic_train = 24
    d.synthetic_val = 8
    d.synthetic_size = (128, 192)
    d.backgrounds_per_fg = 4
    d.val_batch_size = 1
    config.augmentation.crop_sizes = [96, 128, 160]
    config.augmentation.out_size = 96
    o = config.optim
    o.batch_size = 4
    t = config.train
    t.log_every = 8
    t.val_at_start = True
    t.sample_count = 4
    if stage == "teacher":
        o.lr, o.eta_min, o.epochs = 1e-3, 1e-5, 6
    else:
        o.lr, o.eta_min, o.epochs = 1e-3, 1e-3, 3
        config.distill.teacher = "runs/dim_prune-demo_teacher/best"
    if stage == "retrain":
        config.pruning.cfg = "runs/dim_prune-demo_prune"
    return config
