"""Converted-model directories: `config.json` (family + config) beside an Orbax checkpoint of the parameters.

Models are built abstractly (`nnx.eval_shape`), so nothing is allocated before the real values arrive.
"""

from __future__ import annotations

import json
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


def read_config(directory: str | Path) -> tuple[str, Any, dict[str, Any]]:
    """(family, config, info) of a converted directory."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; expected a directory written by `port/convert.py`")
    try:
        meta = json.loads(path.read_text())
        config_cls, _ = registry.family(meta["family"])
        config = registry.config_from_dict(config_cls, meta["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a valid jaxmatte config ({err})") from err
    return meta["family"], config, meta.get("info", {})


def load_pretrained(directory: str | Path, *, dtype: Any = jnp.float32) -> nnx.Module:
    """A ready module (eval mode) from a directory written by `port/convert.py` or `save_pretrained`.

    `dtype` is the compute dtype (e.g. `jnp.bfloat16`); parameters stay float32.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    family, config, _ = read_config(directory)
    abstract = abstract_model(family, config, dtype=dtype)
    target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in stored_shapes(abstract).items()}
    with ocp.StandardCheckpointer() as checkpointer:
        values = checkpointer.restore(directory / PARAMS_DIR, nest(target))
    return fill(abstract, flatten(values))


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
