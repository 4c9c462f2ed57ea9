"""TSR-Matte training. Variants: default (DIS5K recipe), demo (small model on synthetic data, CPU, minutes),
faithful (default + the original's random frozen teacher with Feat weight 0.2, clamped refined probability, leftover
micro-batches dropped at epoch ends and non-finite updates skipped)."""

from jaxmatte.train.state import base_config

VARIANTS = ("default", "demo", "faithful")


def get_config(arg=None):
    variant = arg or "default"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    config = base_config("tsr")
    config.variant = variant
    if variant == "faithful":
        config.teacher.mode = "random"
        config.teacher.weight = 0.2
        config.loss.clamp_refined = True
        config.optim.drop_partial_accumulation = True
        config.optim.skip_nonfinite = True
    if variant == "demo":
        demo(config)
    return config


def demo(config):
    """A small TSR on synthetic DIS-style data: about five minutes on two CPU cores, jit compile included."""
    m = config.model
    m.preset = "tiny"
    m.embed_dim = 24
    m.depths = (1, 1, 2, 1)
    m.num_heads = (1, 2, 4, 8)
    m.window_size = 6
    m.safe_size = 192
    m.drop_path_rate = 0.0
    m.decoder_channels = (64, 32, 16)
    m.head_channels = (16, 8)
    m.refiner_mid_channels = 16
    m.refiner_num_blocks = 1
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
