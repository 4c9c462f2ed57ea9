"""Matting Prune: distillation-guided channel pruning of Deep Image Matting (and DIM teacher training).

Variants:

- prune (default): stage 1 (spec §6): the full-width student with BN sparsity (scales 0.5, frozen zero biases, L1
  sub-gradient 1e-4 encoder / 1e-5 decoder before Adam), alpha + teacher-alpha + SPKD losses, Adam 0.01, clamp +-5,
  batch 1, 15 epochs; at the end the global per-part pruning at rate 0.5 writes `pruned_cfg.json` to the run;
- retrain: stage 2 (§8): the pruned student from `pruning.cfg` (the prune run's directory), fresh weights, the same
  losses, 30 epochs;
- faithful_prune / faithful_retrain: the same with the original's quirks (last-layer-only SPKD, one-iteration
  trimaps);
- teacher: the DIM teacher on the alpha loss only (no distillation);
- demo_teacher, demo_prune, demo_retrain: CPU-sized runs of the three on embedded synthetic composites, run in that
  order (each reads the previous run's directory).

Both stages need the teacher: `python port/convert.py dim --src BEST_checkpoint.tar --out ckpt/dim_teacher`, then
`--config.distill.teacher=ckpt/dim_teacher`. Data: `data.train_roots` / `val_roots` folders of `fg/` + `alpha/` +
`bg/` (composited on the fly, `data.backgrounds_per_fg` backgrounds each) or `image/` + `alpha/` (+ `trimap/`).
Stage 2: `--config.pruning.cfg=runs/dim_prune-prune`.
"""

from jaxmatte.models.dim.recipe import (
    demo_settings,
    dim_config,
    faithful_settings,
    prune_settings,
    retrain_settings,
    teacher_settings,
)

VARIANTS = (
    "prune",
    "retrain",
    "faithful_prune",
    "faithful_retrain",
    "teacher",
    "demo_teacher",
    "demo_prune",
    "demo_retrain",
)


def get_config(arg=None):
    variant = arg or "prune"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    stage = variant.rpartition("_")[2]
    config = dim_config()
    config.name = "dim_prune"  # run directories: runs/dim_prune-<variant>
    config.variant = variant
    if stage == "prune":
        prune_settings(config)
        config.distill.teacher = "ckpt/dim_teacher"
    elif stage == "retrain":
        retrain_settings(config)
        config.distill.teacher = "ckpt/dim_teacher"
        config.pruning.cfg = f"runs/dim_prune-{variant.replace('retrain', 'prune')}"
    else:
        teacher_settings(config)
    if variant.startswith("faithful"):
        faithful_settings(config)
    if variant.startswith("demo"):
        demo_settings(config, stage)
    return config
