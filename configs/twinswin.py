"""TwinSwin-Matte training. Variants: default (DIS5K recipe, 16 x 4 micro-batches), demo (small model on synthetic
data, CPU), faithful (the original code's recipe: teacher off, leftover micro-batches dropped at epoch ends,
non-finite updates skipped). The random frozen teacher that the original README describes is
`--config.teacher.mode=random`."""

from jaxmatte.models.tsr.recipe import demo_settings, tsr_config

VARIANTS = ("default", "demo", "faithful")


def get_config(arg=None):
    variant = arg or "default"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    config = tsr_config("twinswin")
    config.variant = variant
    config.optim.batch_size = 16
    config.optim.accum_steps = 4
    config.optim.eta_min = 0.0
    if variant == "faithful":
        config.optim.drop_partial_accumulation = True
    if variant == "demo":
        demo_settings(config)
    return config
