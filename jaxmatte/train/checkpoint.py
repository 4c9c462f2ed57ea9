"""Run checkpoints (Orbax `CheckpointManager` under ``workdir/checkpoints``) and `save_pretrained` exports.

A checkpoint holds the train state (parameters, the rest of the model state, optimizer state), the grain iterator
position and a JSON record (step, best validation value). PRNG key arrays are stored as their raw key data.
`restore_latest` returns None for a fresh workdir, so a run that finds a checkpoint resumes exactly where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from jaxmatte import registry
from jaxmatte.preprocessing import KEY as PREPROCESSING_KEY
from jaxmatte.preprocessing import Preprocessing
from jaxmatte.pretrained import save_pretrained

CHECKPOINTS = "checkpoints"


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_storable(tree: Any) -> Any:
    """PRNG key arrays -> their uint32 key data."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def from_storable(tree: Any, like: Any) -> Any:
    """Undo `to_storable`, taking the key implementations from `like`."""
    return jax.tree.map(
        lambda x, ref: jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref)) if _is_key(ref) else x, tree, like
    )


def _abstract(x: Any) -> Any:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


class RunCheckpoints:
    """Save / restore of a run in `workdir`; keeps the newest `max_to_keep` checkpoints."""

    def __init__(self, workdir: str | Path, *, max_to_keep: int = 2):
        self.directory = Path(workdir).absolute() / CHECKPOINTS
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, iterator: grain.DatasetIterator, record: dict[str, Any]) -> None:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(to_storable(state)),
            data=grain.checkpoint.CheckpointSave(iterator),
            record=ocp.args.JsonSave(record),
        )
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()

    def restore_latest(self, state: Any, iterator: grain.DatasetIterator) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, record) of the newest checkpoint, restored with `state`'s structure and shardings (and
        the iterator moved to its position); None when there is none."""
        step = self.manager.latest_step()
        if step is None:
            return None
        target = jax.tree.map(_abstract, to_storable(state))
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            data=grain.checkpoint.CheckpointRestore(iterator),
            record=ocp.args.JsonRestore(),
        )
        restored = self.manager.restore(step, args=args)
        return step, from_storable(restored["state"], state), dict(restored["record"])

    def close(self) -> None:
        self.manager.close()


def run_preprocessing(config: Any) -> Preprocessing:
    """The preprocessing record of a run: what its data pipeline fed the model, and rounding of the outputs."""
    data = config.data
    return Preprocessing(
        resize=str(data.policy),
        size=int(data.size),
        resample=str(data.resample),
        mask_resample=str(data.mask_resample),
    )


def export_info(config: Any, step: int, val: dict[str, float] | None) -> dict[str, Any]:
    """The `info` block of an exported directory (what `predict.py` reads)."""
    return {
        PREPROCESSING_KEY: run_preprocessing(config).to_dict(),
        "output": registry.system(config.model.family).output,
        "trained_by": "jaxmatte",
        "step": int(step),
        "val": {k: float(v) for k, v in (val or {}).items()},
    }


def export(model: Any, model_config: Any, directory: str | Path, info: dict[str, Any]) -> Path:
    """`save_pretrained` of what the system exports (e.g. TSR without its teacher, a training aid only) plus `info`."""
    hook = registry.system(model.family).export
    if hook is not None:
        model, model_config = hook(model, model_config)
    return save_pretrained(model, model_config, directory, info=info)
