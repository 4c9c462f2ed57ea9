"""TwinSwin-Matte training. Variants: default (DIS5K recipe, 16 x 4 micro-batches), demo (small model on synthetic
data, CPU), faithful (the original code's recipe: teacher off, leftover micro-batches dropped at epoch ends,
non-finite updates skipped). The random frozen teacher that the original README describes is
`--config.teacher.mode=random`."""

from jaxmatte.train.state import base_config

VARIANTS = ("default", "demo", "faithful")


def get_config(arg=None):
    variant = arg or "default"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    config = base_config("twinswin")
    config.variant = variant
    config.optim.batch_size = 16
    config.optim.accum_steps = 4
    config.optim.eta_min = 0.0
    if variant == "faithful":
        config.optim.drop_partial_accumulation = True
        config.optim.skip_nonfinite = True
    if variant == "demo":
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
        d = config.data
        d.synthetic_root = "runs/data/synthetic"
        d.size = 192
        d.val_batch_size = 8
        o = config.optim
        o.lr = 1e-3
        o.eta_min = 1e-5
        o.batch_size = 8
        o.accum_steps = 1
        o.epochs = 12
        config.teacher.steps = 600  # used with --config.teacher.mode=pretrained
        config.train.compute_dtype = "float32"
        config.train.log_every = 4
        config.train.val_at_start = True
    return config
