"""Model families by name: how a saved `config.json` turns back into a module."""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from collections.abc import Callable
from typing import Any

_FAMILIES: dict[str, tuple[type, type]] = {}
_FAMILY_MODULES = (
    "jaxmatte.backbones.swin",
    "jaxmatte.backbones.vit",
    "jaxmatte.backbones.dinov3",
    "jaxmatte.models.tsr.modeling",
)


def register(name: str, config_cls: type) -> Callable[[type], type]:
    """Class decorator: `@register("swin", SwinConfig)` on the module built as `Model(config, rngs=...)`."""

    def wrap(model_cls: type) -> type:
        _FAMILIES[name] = (config_cls, model_cls)
        model_cls.family = name
        return model_cls

    return wrap


def family(name: str) -> tuple[type, type]:
    """(config class, model class) of a registered family."""
    if name not in _FAMILIES:
        for module in _FAMILY_MODULES:
            importlib.import_module(module)
    if name not in _FAMILIES:
        raise KeyError(f"unknown model family {name!r}; known: {sorted(_FAMILIES)}")
    return _FAMILIES[name]


def config_to_dict(config: Any) -> dict[str, Any]:
    """A frozen dataclass config as JSON-ready values (tuples become lists)."""
    return json_ready(dataclasses.asdict(config))


def json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def config_from_dict(config_cls: type, values: dict[str, Any]) -> Any:
    """Inverse of `config_to_dict`: lists become tuples where the field is a tuple; unknown keys are an error."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{config_cls.__name__} has no fields {unknown}")
    hints = typing.get_type_hints(config_cls)
    return config_cls(**{k: _coerce(hints[k], v) for k, v in values.items()})


def _coerce(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            if arm is not type(None):
                return _coerce(arm, value)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        if args:
            return tuple(_coerce(a, v) for a, v in zip(args, value, strict=True))
        return tuple(value)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return config_from_dict(hint, value)
    return value
