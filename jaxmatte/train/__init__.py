"""Training, the same loop for every registered system: configs (`config`), `Trainer` (loop), model / optimizer
construction and jitted steps (state), Orbax checkpoints, the data-parallel mesh and run logs."""

from jaxmatte.train.config import apply_override, base_config, load_config, model_config
from jaxmatte.train.loop import Trainer, run
from jaxmatte.train.state import epoch_schedule, make_optimizer

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
