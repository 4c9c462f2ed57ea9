"""Run checkpoints (Orbax `CheckpointManager` under ``workdir/checkpoints``) and `save_pretrained` exports.

A checkpoint holds the train state (parameters, the rest of the model state, optimizer state), the grain iterator
position and a JSON record (step, best validation value). PRNG key arrays are stored as their raw key data.
`restore_latest` returns None for a fresh workdir, so a run that finds a checkpoint resumes exactly where it stopped.

Crash safety: Orbax writes a checkpoint into ``<step>.orbax-checkpoint-tmp-*`` and renames it to ``<step>`` once
complete, so a run killed while saving finds only finished checkpoints (the leftover temporary folder is deleted
when the next run opens the directory). `export` writes ``best/`` / ``last/`` into ``.<name>.tmp`` and swaps it in
with two renames; `recover_export` undoes a swap cut between them.
"""

from __future__ import annotations

import os
import shutil
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


def _leaves(tree: Any) -> list[tuple[Any, Any]]:
    return jax.tree_util.tree_leaves_with_path(tree)


def _name(path: Any) -> str:
    """A dotted name of a tree path, the same for a train state and Orbax's stored metadata."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return ".".join(parts)


def _abstract(x: Any) -> Any:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


class RunCheckpoints:
    """Save / restore of a run in `workdir`; keeps the newest `max_to_keep` checkpoints."""

    def __init__(self, workdir: str | Path, *, max_to_keep: int = 2):
        self.directory = Path(workdir).absolute() / CHECKPOINTS
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=False, cleanup_tmp_directories=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, iterator: grain.DatasetIterator, record: dict[str, Any]) -> None:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(to_storable(state)),
            data=grain.checkpoint.CheckpointSave(iterator),
            record=ocp.args.JsonSave(record),
        )
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()

    def mismatch(self, step: int, state: Any) -> list[str]:
        """How the arrays stored at `step` differ from `state`'s (missing, unexpected, other shape or dtype); empty
        when they match or the checkpoint's metadata cannot be read."""
        from etils import epath

        try:
            stored = ocp.StandardCheckpointHandler().metadata(epath.Path(self.directory / str(step) / "state"))
        except Exception:  # no metadata: leave the judgement to the restore
            return []
        saved = {_name(path): (tuple(leaf.shape), str(leaf.dtype)) for path, leaf in _leaves(stored)}
        wanted = {_name(path): (tuple(leaf.shape), str(leaf.dtype)) for path, leaf in _leaves(to_storable(state))}
        if not saved:
            return []
        problems = [f"{name} not in the checkpoint" for name in wanted if name not in saved]
        problems += [f"{name} only in the checkpoint" for name in saved if name not in wanted]
        for name in wanted.keys() & saved.keys():
            (old_shape, old_dtype), (shape, dtype) = saved[name], wanted[name]
            if (old_shape, old_dtype) != (shape, dtype):
                problems.append(f"{name} stored {old_dtype}{list(old_shape)}, here {dtype}{list(shape)}")
        return sorted(problems)

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


def _side_paths(directory: Path) -> tuple[Path, Path]:
    """(temporary, previous) siblings of an export directory."""
    return directory.with_name(f".{directory.name}.tmp"), directory.with_name(f".{directory.name}.old")


def export(model: Any, model_config: Any, directory: str | Path, info: dict[str, Any]) -> Path:
    """`save_pretrained` of what the system exports (e.g. TSR without its teacher, a training aid only) plus `info`,
    written beside `directory` and renamed into place, so `directory` is always a complete export (or absent)."""
    hook = registry.system(model.family).export
    if hook is not None:
        model, model_config = hook(model, model_config)
    directory = Path(directory).absolute()
    tmp, old = _side_paths(directory)
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(model, model_config, tmp, info=info)
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def recover_export(directory: str | Path) -> None:
    """Clean up after an `export` that was killed: the previous export comes back if the swap was cut between its
    two renames; a half-written temporary folder is deleted."""
    directory = Path(directory).absolute()
    tmp, old = _side_paths(directory)
    if old.exists() and not directory.exists():
        os.replace(old, directory)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
