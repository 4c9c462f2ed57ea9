"""Converted-model directories: `config.json` (family + config) beside an Orbax checkpoint of the parameters.

Models are built abstractly (`nnx.eval_shape`), so nothing is allocated before the real values arrive.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmatte import registry

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
STORED = (nnx.Param, nnx.BatchStat)


def abstract_model(family: str, config: Any, **kwargs: Any) -> nnx.Module:
    """The family's module with ShapeDtypeStruct leaves; `kwargs` go to the constructor (e.g. `dtype`)."""
    _, model_cls = registry.family(family)
    return nnx.eval_shape(lambda: model_cls(config, rngs=nnx.Rngs(0), **kwargs))


def path_name(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def stored_shapes(abstract: nnx.Module) -> dict[str, jax.ShapeDtypeStruct]:
    """Dotted path -> abstract leaf of every stored variable (parameters and batch statistics)."""
    _, stored, _ = nnx.split(abstract, STORED, ...)
    return {path_name(p): v.get_value() for p, v in nnx.to_flat_state(stored)}


def fill(abstract: nnx.Module, values: Mapping[str, Any]) -> nnx.Module:
    """Merge `values` (dotted path -> array, exactly the stored variables) into an abstract model.

    Arrays are cast to the abstract leaf's dtype. Non-stored state (dropout RNG streams) is created fresh.
    """
    graphdef, stored, rest = nnx.split(abstract, STORED, ...)
    shapes = {path_name(p): v.get_value() for p, v in nnx.to_flat_state(stored)}
    missing = sorted(set(shapes) - set(values))
    extra = sorted(set(values) - set(shapes))
    wrong = [
        f"{k}: got {tuple(np.shape(values[k]))}, expected {shapes[k].shape}"
        for k in sorted(set(shapes) & set(values))
        if tuple(np.shape(values[k])) != tuple(shapes[k].shape)
    ]
    if missing or extra or wrong:
        raise ValueError(
            "parameters do not fit the model:\n"
            + "".join(f"  missing {k}\n" for k in missing)
            + "".join(f"  unexpected {k}\n" for k in extra)
            + "".join(f"  shape {w}\n" for w in wrong)
        )

    def leaf(path: tuple[Any, ...], variable: nnx.Variable) -> nnx.Variable:
        template = variable.get_value()
        return variable.replace(jnp.asarray(values[path_name(path)], dtype=template.dtype))

    stored = nnx.from_flat_state([(p, leaf(p, v)) for p, v in nnx.to_flat_state(stored)])
    rest = jax.tree.map(_fresh, rest)
    model = nnx.merge(graphdef, stored, rest)
    model.eval()
    return model


def _fresh(leaf: Any) -> Any:
    if isinstance(leaf, jax.ShapeDtypeStruct):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            keys = jax.random.split(jax.random.key(0), max(1, int(np.prod(leaf.shape))))
            return keys.reshape(leaf.shape)
        return jnp.zeros(leaf.shape, leaf.dtype)
    return leaf


def stored_values(model: nnx.Module) -> dict[str, np.ndarray]:
    """Dotted path -> numpy array of every stored variable of a concrete model."""
    _, stored, _ = nnx.split(model, STORED, ...)
    return {path_name(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(stored)}


def save_pretrained(
    model: nnx.Module, config: Any, directory: str | Path, *, info: Mapping[str, Any] | None = None
) -> Path:
    """Write `directory/config.json` and `directory/params` (Orbax). `info` is stored as-is (e.g. preprocessing)."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    family = getattr(type(model), "family", None)
    if family is None:
        raise TypeError(f"{type(model).__name__} is not a registered model family")
    params_dir = directory / PARAMS_DIR
    if params_dir.exists():
        import shutil

        shutil.rmtree(params_dir)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(params_dir, nest(stored_values(model)))
        checkpointer.wait_until_finished()
    meta = {"family": family, "config": registry.config_to_dict(config), "info": dict(info or {})}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def is_model_dir(directory: str | Path) -> bool:
    """Whether `directory` was written by `save_pretrained` / `port/convert.py` (config.json beside params/)."""
    directory = Path(directory)
    return (directory / CONFIG_FILE).is_file() and (directory / PARAMS_DIR).is_dir()


def model_dir_problem(directory: str | Path) -> str | None:
    """What keeps `directory` from being a saved model, as one line naming the missing part; None when it is one."""
    directory = Path(directory)
    config, params = directory / CONFIG_FILE, directory / PARAMS_DIR
    if not directory.is_dir():
        return f"{directory}: no such directory"
    if not config.is_file() and not params.is_dir():
        return f"{directory}: no {CONFIG_FILE} and no {PARAMS_DIR}/; expected a directory written by `port/convert.py`"
    if not config.is_file():
        return f"{config}: missing ({PARAMS_DIR}/ is there); the save or copy did not finish"
    if not params.is_dir():
        return f"{params}: missing ({CONFIG_FILE} is there, the parameters are not); the save or copy did not finish"
    return None


class ModelDirError(ValueError):
    """A converted / saved model directory that cannot be read (damaged config.json or Orbax parameters)."""


def read_config(directory: str | Path) -> tuple[str, Any, dict[str, Any]]:
    """(family, config, info) of a converted directory."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; expected a directory written by `port/convert.py`")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ModelDirError(f"{path}: not readable JSON ({' '.join(str(err).split())[:200]})") from err
    shaped = isinstance(meta, dict) and isinstance(meta.get("family"), str) and isinstance(meta.get("config"), dict)
    if not shaped:
        raise ModelDirError(f"{path}: not a jaxmatte model config (needs a 'family' name and a 'config' object)")
    try:
        config_cls, _ = registry.family(meta["family"])
        config = registry.config_from_dict(config_cls, meta["config"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        detail = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise ModelDirError(f"{path}: not a valid jaxmatte config ({detail})") from err
    info = meta.get("info", {})
    if not isinstance(info, dict):
        raise ModelDirError(f"{path}: 'info' is a {type(info).__name__}, not an object")
    return meta["family"], config, info


def load_pretrained(directory: str | Path, *, dtype: Any = jnp.float32) -> nnx.Module:
    """A ready module (eval mode) from a directory written by `port/convert.py` or `save_pretrained`.

    `dtype` is the compute dtype (e.g. `jnp.bfloat16`); parameters stay float32.
    """
    directory = Path(directory).absolute()
    family, config, _ = read_config(directory)
    if not (directory / PARAMS_DIR).is_dir():
        raise FileNotFoundError(model_dir_problem(directory))
    abstract = abstract_model(family, config, dtype=dtype)
    target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in stored_shapes(abstract).items()}
    values = restore_params(directory / PARAMS_DIR, nest(target))
    return fill(abstract, flatten(values))


def restore_params(path: Path, target: Any) -> Any:
    """Orbax restore of `path` into `target`; a damaged checkpoint gives one `ModelDirError` line naming `path`."""
    import orbax.checkpoint as ocp

    quiet_failed_restore_noise()
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(path, target)
    except Exception as err:  # noqa: BLE001 - tensorstore / JSON / metadata failures alike
        raise ModelDirError(f"{path}: damaged or incomplete Orbax checkpoint ({orbax_problem(err)})") from err


def orbax_problem(err: BaseException) -> str:
    """The first line of an Orbax / tensorstore error's root cause (the wrapping errors only say "error while
    reading"), without tensorstore's JSON spec."""
    seen = {id(err)}
    while err.__cause__ is not None and id(err.__cause__) not in seen and str(err.__cause__).strip():
        err = err.__cause__
        seen.add(id(err))
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return text.split(" [tensorstore_spec=")[0][:400]


def quiet_failed_restore_noise() -> None:
    """Silence the after-effects of a failed Orbax restore (installed once, for the process).

    Orbax runs each restore in a fresh asyncio loop and closes it as soon as one read fails, while the other
    tensorstore reads are still running. Two kinds of noise follow, each a traceback per pending read: (1) the reads
    that finish later call `loop.call_soon_threadsafe` on the closed loop from tensorstore's threads, and the
    RuntimeError "Event loop is closed" goes to `sys.unraisablehook`; (2) the reads that fail too leave tasks whose
    exception nobody retrieves, which asyncio's exception handler logs ("Task/Future exception was never retrieved")
    when they are collected. Only these are dropped: other unraisable errors go to the previous hook, other asyncio
    records are logged as before."""
    if getattr(sys.unraisablehook, "_jaxmatte_quiet", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not _closed_loop_callback(unraisable.exc_value, unraisable.exc_traceback):
            previous(unraisable)

    hook._jaxmatte_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_orphaned_read_filter)


def _closed_loop_callback(error: BaseException | None, tb: Any) -> bool:
    if not isinstance(error, RuntimeError) or str(error) != "Event loop is closed":
        return False
    frames = traceback.extract_tb(tb) if tb is not None else []
    return any(frame.name == "call_soon_threadsafe" for frame in frames)


_STATUS_ERROR = re.compile(r"[A-Z_]+: ")  # tensorstore errors start with an absl status code


def _orphaned_read_filter(record: logging.LogRecord) -> bool:
    """False for a never-retrieved tensorstore error (a read left behind by a failed restore)."""
    message = str(record.msg)
    if not message.startswith(("Task exception was never retrieved", "Future exception was never retrieved")):
        return True
    error = record.exc_info[1] if record.exc_info else None
    return not (isinstance(error, ValueError) and _STATUS_ERROR.match(str(error)))


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a.b.c': x} -> {'a': {'b': {'c': x}}}."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Inverse of `nest`."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


# Every Orbax restore in a process that uses jaxmatte (run resume included) gets the quiet hooks.
quiet_failed_restore_noise()
