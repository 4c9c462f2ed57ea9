"""Initial weights of a fresh run.

- `model.backbone_weights`: a Swin directory written by ``python port/convert.py swin`` fills the student's backbone
  (e.g. timm's ``swin_base_patch4_window7_224.ms_in22k_ft_in1k``, which the original recipe starts from).
- `model.init_from`: a TwinSwin / TSR directory (a converted release or a jaxmatte export such as ``runs/x/best``)
  fills the student and, when both sides have one, the refiner; for fine-tuning.

Every parameter and BatchNorm statistic of the filled part must be found with its shape; entries the source has in
addition (e.g. a final norm) are ignored and logged. A resumed run takes its weights from its checkpoint instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flax import nnx

from jaxmatte.pretrained import load_pretrained, read_config

logger = logging.getLogger(__name__)

STORED = nnx.Any(nnx.Param, nnx.BatchStat)
MODEL_FAMILIES = ("tsr", "twinswin")


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


def load_backbone(model: nnx.Module, directory: str | Path) -> None:
    """Fill `model.student.backbone` from a converted Swin directory."""
    family, _, _ = read_config(directory)
    if family != "swin":
        raise ValueError(
            f"{directory}: holds a {family!r} model; model.backbone_weights needs a Swin converted with "
            "`python port/convert.py swin`"
        )
    unused = copy_matching(model.student.backbone, load_pretrained(directory), f"{directory} (backbone)")
    logger.info("backbone initialised from %s%s", directory, f"; unused: {', '.join(unused)}" if unused else "")


def load_model(model: nnx.Module, directory: str | Path) -> None:
    """Fill the student (and the refiner where both models have one) from a TwinSwin / TSR directory."""
    family, _, _ = read_config(directory)
    if family not in MODEL_FAMILIES:
        raise ValueError(f"{directory}: holds a {family!r} model; model.init_from needs one of {MODEL_FAMILIES}")
    source = load_pretrained(directory)
    copy_matching(model.student, source.student, f"{directory} (student)")
    parts = ["student"]
    if getattr(model, "refiner", None) is not None:
        if getattr(source, "refiner", None) is None:
            logger.warning("%s has no refiner: the refiner starts from random weights", directory)
        else:
            copy_matching(model.refiner, source.refiner, f"{directory} (refiner)")
            parts.append("refiner")
    logger.info("%s initialised from %s", " and ".join(parts), directory)


def warm_start(model: nnx.Module, config: Any, *, customised_backbone: bool) -> None:
    """Apply `model.backbone_weights` / `model.init_from` of `config` to a freshly built `model`."""
    backbone, init_from = config.model.backbone_weights, config.model.init_from
    if backbone and init_from:
        raise ValueError("set model.backbone_weights or model.init_from, not both (init_from fills the backbone too)")
    if init_from:
        load_model(model, init_from)
    elif backbone:
        load_backbone(model, backbone)
    elif not customised_backbone:
        logger.warning(
            "model.backbone_weights is not set: the %s Swin backbone starts from random weights. The original recipe "
            "starts from ImageNet weights (convert them with `python port/convert.py swin`).",
            config.model.preset,
        )
