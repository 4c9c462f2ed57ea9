"""TSR-Matte training. Variants: default (DIS5K recipe), demo (small model on synthetic data, CPU, minutes),
faithful (default + the original's random frozen teacher with Feat weight 0.2, clamped refined probability, leftover
micro-batches dropped at epoch ends and non-finite updates skipped)."""

from jaxmatte.models.tsr.recipe import demo_settings, tsr_config

VARIANTS = ("default", "demo", "faithful")


def get_config(arg=None):
    variant = arg or "default"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    config = tsr_config("tsr")
    config.variant = variant
    if variant == "faithful":
        config.teacher.mode = "random"
        config.teacher.weight = 0.2
        config.loss.clamp_refined = True
        config.optim.drop_partial_accumulation = True
    if variant == "demo":
        demo_settings(config)
    return config
