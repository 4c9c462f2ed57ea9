"""Initial weights of a fresh run: the shared machinery behind each system's `warm_start` hook.

`model.backbone_weights` names a converted backbone directory (e.g. ImageNet Swin, DINOv3), `model.init_from` a
directory of the same system (a converted release or an export such as ``runs/x/best``); what each fills is the
system's business (`jaxmatte.registry.System.warm_start`). Every parameter and BatchNorm statistic of the filled part
must be found with its shape; entries the source has in addition (e.g. a final norm) are ignored and logged. A resumed
run takes its weights from its checkpoint instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flax import nnx

from jaxmatte import registry
from jaxmatte.pretrained import load_pretrained, read_config

logger = logging.getLogger(__name__)

STORED = nnx.Any(nnx.Param, nnx.BatchStat)


def _flat(module: nnx.Module) -> dict[tuple[Any, ...], Any]:
    return dict(nnx.to_flat_state(nnx.state(module, STORED)))


def copy_matching(target: nnx.Module, source: nnx.Module, origin: str) -> list[str]:
    """Copy every parameter / statistic of `target` from the same path in `source`; returns the unused source names."""
    wanted, found = _flat(target), _flat(source)
    problems = []
    for path, variable in wanted.items():
        name = ".".join(map(str, path))
        if path not in found:
            problems.append(f"{name} missing")
        elif found[path].get_value().shape != variable.get_value().shape:
            problems.append(f"{name} {found[path].get_value().shape} != {variable.get_value().shape}")
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise ValueError(f"{origin}: does not fit this model: {'; '.join(problems[:8])}{more}")
    nnx.update(target, nnx.from_flat_state({path: found[path] for path in wanted}))
    return sorted(".".join(map(str, path)) for path in set(found) - set(wanted))


def load_directory(directory: str | Path, families: Sequence[str], setting: str, hint: str = "") -> nnx.Module:
    """The model saved in `directory`, which must be one of `families` (else a clear error naming `setting`)."""
    family, _, _ = read_config(directory)
    if family not in families:
        wanted = " or ".join(repr(f) for f in families)
        raise ValueError(f"{directory}: holds a {family!r} model; {setting} needs a {wanted} model{hint}")
    return load_pretrained(directory)


def fill_part(target: nnx.Module, directory: str | Path, source: nnx.Module, part: str) -> None:
    """`copy_matching` with a log line naming the part and the unused source entries."""
    unused = copy_matching(target, source, f"{directory} ({part})")
    logger.info("%s initialised from %s%s", part, directory, f"; unused: {', '.join(unused)}" if unused else "")


def warm_start(model: nnx.Module, config: Any) -> None:
    """Apply `model.backbone_weights` / `model.init_from` of `config` to a freshly built `model` (system hook)."""
    family = config.model.family
    backbone, init_from = config.model.backbone_weights, config.model.init_from
    if backbone and init_from:
        raise ValueError("set model.backbone_weights or model.init_from, not both (init_from fills the backbone too)")
    hook = registry.system(family).warm_start
    if hook is None:
        if backbone or init_from:
            raise ValueError(f"the {family} system takes no model.backbone_weights / model.init_from")
        return
    hook(model, config)
