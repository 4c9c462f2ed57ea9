"""Training: `load_config` + `Trainer` (loop), model / optimizer construction (state), Orbax checkpoints, the
data-parallel mesh and run logs."""

from jaxmatte.train.loop import Trainer, apply_override, load_config, run
from jaxmatte.train.state import base_config, epoch_schedule, make_optimizer, model_config

__all__ = [
    "Trainer",
    "apply_override",
    "base_config",
    "epoch_schedule",
    "load_config",
    "make_optimizer",
    "model_config",
    "run",
]
