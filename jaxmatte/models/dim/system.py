"""DIM as a system: RGB + trimap in, alpha out (known regions forced from the trimap); the two Matting Prune stages.

Run-config sections read here (`recipe.dim_config`):

- ``distill``: ``teacher`` (a converted DIM directory; empty: no distillation, plain alpha-prediction training),
  ``w_alpha`` / ``w_kd`` / ``w_spkd`` and ``spkd`` (``fixed``: the four layer pairs summed; ``faithful``: the last
  pair only, as the original's overwritten loop);
- ``sparsity``: ``enabled`` (stage 1: BN scales start at ``gamma_init``, BN biases at 0 and frozen, the L1
  sub-gradient ``encoder`` / ``decoder`` x sign(gamma) added to the raw gradients before clipping and Adam),
  ``prune_rate`` (the cfg written to ``pruned_cfg.json`` when the stage ends);
- ``pruning.cfg``: stage 2's widths (a ``pruned_cfg.json``, the prune stage's run directory, or an original
  ``pruned.tar``);
- ``augmentation``: `data.DIMAugment` fields (crop sizes, output size, faithful trimaps).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxmatte import losses
from jaxmatte.data.composition import CompositionFolders, composite_top_left
from jaxmatte.data.folders import open_folders
from jaxmatte.models.dim import pruning
from jaxmatte.models.dim.data import DIMAugment, DIMFields, record_trimap
from jaxmatte.models.dim.modeling import (
    TEACHER_WIDTHS,
    DIMConfig,
    DIMStudentConfig,
    bn_scales,
    dim_input,
    force_known,
)
from jaxmatte.pretrained import read_config
from jaxmatte.registry import System, register_system
from jaxmatte.train.config import merge_overrides
from jaxmatte.train.param_groups import path_keys
from jaxmatte.train.warm_start import fill_part, load_directory

logger = logging.getLogger(__name__)

SPKD_MODES = ("fixed", "faithful")
FAMILIES = ("dim", "dim_student")


@dataclasses.dataclass(frozen=True)
class DIMLoss:
    """``loss(model, batch)``: w_alpha·L_alpha(student, GT) [+ w_kd·L_alpha(student, teacher) + w_spkd·SPKD], every
    alpha term over the ground truth's unknown region (``batch["unknown"]``)."""

    distill: bool = True
    w_alpha: float = 1.0
    w_kd: float = 1.0
    w_spkd: float = 1.0
    spkd: str = "fixed"

    @classmethod
    def from_config(cls, config: Any) -> DIMLoss:
        d = config.distill
        if d.spkd not in SPKD_MODES:
            raise ValueError(f"distill.spkd must be one of {SPKD_MODES}, got {d.spkd!r}")
        return cls(bool(d.teacher), float(d.w_alpha), float(d.w_kd), float(d.w_spkd), str(d.spkd))

    def __call__(self, model: nnx.Module, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        x = dim_input(batch["image"], batch["trimap"])
        out = model(x)
        unknown = batch["unknown"]
        terms = {"alpha": losses.alpha_prediction_loss(out.alpha, batch["alpha"], unknown)}
        total = self.w_alpha * terms["alpha"]
        if self.distill:
            teacher = model.teacher_output(x)
            terms["kd"] = losses.alpha_prediction_loss(out.alpha, teacher.alpha, unknown)
            terms["spkd"] = losses.spkd_loss(teacher.features, out.features, out.projected, mode=self.spkd)
            total = total + self.w_kd * terms["kd"] + self.w_spkd * terms["spkd"]
        return total, {**terms, "total": total}


class ValidationRecords:
    """A validation source whose records all carry "image" (top-left composites for fg / bg records) and "trimap"
    (`data.record_trimap` when the record has none), as the loop's matting validation reads them."""

    def __init__(self, source: Any, seed: int = 0):
        self.source, self.seed = source, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = dict(self.source[index])
        if record.get("image") is None:
            record["image"] = composite_top_left(record["fg"], record["mask"], record["bg"])
        record["trimap"] = record_trimap(record, self.seed)
        return record


def open_split(config: Any, roots: Any, train: bool) -> Any:
    """fg/ + alpha/ + bg/ roots (composited on the fly, `data.backgrounds_per_fg` backgrounds per foreground), else
    the image / alpha (+ trimap) layouts of `jaxmatte.data.folders`."""
    roots = [Path(root) for root in roots]
    data = config.data
    composed = [root for root in roots if (root / "fg").is_dir() and (root / "bg").is_dir()]
    if composed:
        if len(composed) != len(roots) or len(roots) != 1:
            raise ValueError(f"a composition split is one fg/ + alpha/ + bg/ root, got {[str(r) for r in roots]}")
        source = CompositionFolders(roots[0], backgrounds_per_fg=int(data.backgrounds_per_fg))
    else:
        companions = {"trimap_dir": data.trimap_dir or None, "input_mask_dir": data.input_mask_dir or None}
        source = open_folders(roots, **companions)
    return source if train else ValidationRecords(source, int(config.seed))


def example(config: Any, policy: Any) -> DIMFields:
    return DIMFields(policy, stride=policy.size if policy.kind == "native" else 32, trimap_seed=int(config.seed))


def augment(config: Any) -> DIMAugment:
    return merge_overrides(DIMAugment(), config.augmentation)


def infer(model: nnx.Module, image: jax.Array, trimap: jax.Array) -> jax.Array:
    """Alpha (B, H, W, 1) for normalised images and trimaps / 255, with the trimap's known regions forced."""
    return force_known(model(dim_input(image, trimap)).alpha, trimap)


def trainable(model: nnx.Module) -> Any:
    return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("teacher")))


def configure(arch: DIMConfig, config: Any) -> DIMConfig:
    """Stage 2's widths from ``pruning.cfg``; the frozen teacher from ``distill.teacher``."""
    cfg = config.get("pruning", {}).get("cfg", "")
    if cfg:
        if config.model.family != "dim_student":
            raise ValueError("pruning.cfg builds a pruned student: set model.family='dim_student'")
        arch = dataclasses.replace(arch, widths=pruning.load_cfg(cfg))
    teacher = config.distill.teacher
    if teacher:
        family, teacher_arch, _ = read_config(teacher)
        if family != "dim":
            raise ValueError(f"{teacher}: distill.teacher must be a DIM teacher directory, found a {family!r} model")
        teacher_config = DIMConfig(widths=tuple(teacher_arch.widths))
        arch = dataclasses.replace(arch, teacher=teacher_config)
        if isinstance(arch, DIMStudentConfig):  # the projections map onto the teacher's feature widths
            arch = dataclasses.replace(arch, projection_widths=teacher_config.feature_widths())
    return arch


def warm_start(model: nnx.Module, config: Any) -> None:
    """The teacher's weights from ``distill.teacher``; `model.init_from` (a DIM directory of the same widths) for
    fine-tuning; with ``sparsity.enabled`` every BN scale set to ``gamma_init`` and every BN bias to 0."""
    if config.model.backbone_weights:
        raise ValueError("DIM has no separate backbone: use model.init_from")
    teacher = config.distill.teacher
    if teacher:
        fill_part(model.teacher, teacher, load_directory(teacher, ("dim",), "distill.teacher"), "teacher")
    if config.model.init_from:
        source = load_directory(config.model.init_from, FAMILIES, "model.init_from")
        saved_teacher, model.teacher = model.teacher, None
        try:
            fill_part(model, config.model.init_from, source, "student")
        finally:
            model.teacher = saved_teacher
    if config.sparsity.enabled:
        gamma = float(config.sparsity.gamma_init)
        for block, unit in (name.split(".") for name in pruning.UNIT_NAMES):
            bn = getattr(getattr(model, block), unit).bn
            bn.scale[...] = jnp.full_like(bn.scale[...], gamma)
            bn.bias[...] = jnp.zeros_like(bn.bias[...])


def sparsity_transform(encoder: float, decoder: float) -> optax.GradientTransformation:
    """Adds ``coefficient x sign(gamma)`` to the gradient of every student BN scale (encoder units ``down*``,
    decoder units ``up*``) and zeroes the BN bias gradients (biases stay at their initial 0)."""

    def update(updates, state, params):
        if params is None:
            raise ValueError("the sparsity sub-gradient needs the parameters")

        def adjust(path, grad, param):
            keys = path_keys(path)
            if len(keys) < 3 or keys[-2] != "bn" or not str(keys[0]).startswith(("down", "up")):
                return grad
            if keys[-1] == "bias":
                return jnp.zeros_like(grad)
            if keys[-1] == "scale":
                coefficient = encoder if str(keys[0]).startswith("down") else decoder
                return grad + coefficient * jnp.sign(param).astype(grad.dtype)
            return grad

        return jax.tree_util.tree_map_with_path(adjust, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def grad_transform(config: Any) -> optax.GradientTransformation | None:
    s = config.sparsity
    return sparsity_transform(float(s.encoder), float(s.decoder)) if s.enabled else None


def export(model: nnx.Module, arch: DIMConfig) -> tuple[nnx.Module, DIMConfig]:
    """The network without its teacher."""
    if getattr(model, "teacher", None) is not None:
        model.teacher = None
        arch = dataclasses.replace(arch, teacher=None)
    return model, arch


def size_report(
    widths: tuple[int, ...],
    model: nnx.Module | None = None,
    size: int = 320,
    *,
    projections: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Parameters (of `model` when given, else of a network at `widths`, a student with `feature2..5` to
    `projections` when given) and conv MACs at 224 and `size`."""
    if model is None:
        from jaxmatte.models.dim.modeling import DIM, DIMStudent, DIMStudentConfig

        if projections is None:
            model = nnx.eval_shape(lambda: DIM(DIMConfig(widths=tuple(widths)), rngs=nnx.Rngs(0)))
        else:
            config = DIMStudentConfig(widths=tuple(widths), projection_widths=tuple(projections))
            model = nnx.eval_shape(lambda: DIMStudent(config, rngs=nnx.Rngs(0)))
    params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return {
        "params": params,
        "macs_224": pruning.conv_macs(tuple(widths), 224, 224),
        f"macs_{size}": pruning.conv_macs(tuple(widths), size, size),
    }


def finish(trainer: Any) -> None:
    """After the sparsity stage: prune by the BN scales and write ``pruned_cfg.json`` (with the size report)."""
    config = trainer.config
    if not config.sparsity.enabled:
        return
    from jaxmatte.train.state import merged_model

    model = merged_model(trainer.graphdef, jax.device_get(trainer.state))
    scales = {name: np.asarray(value) for name, value in bn_scales(model).items()}
    result = pruning.prune_widths(scales, float(config.sparsity.prune_rate))
    arch = trainer.model_config
    teacher_arch = arch.teacher if arch.teacher is not None else DIMConfig(widths=TEACHER_WIDTHS)
    teacher = size_report(tuple(teacher_arch.widths))
    student = size_report(result.widths, projections=teacher_arch.feature_widths())
    report = {"teacher": teacher, "full_student": size_report(tuple(arch.widths)), "pruned_student": student}
    path = pruning.save_cfg(result, trainer.workdir, report)
    logger.info(
        "pruned cfg %s -> %s: %.2fM -> %.2fM parameters, %.2fG -> %.2fG MACs at 224",
        list(result.widths),
        path,
        teacher["params"] / 1e6,
        student["params"] / 1e6,
        teacher["macs_224"] / 1e9,
        student["macs_224"] / 1e9,
    )
    print(json.dumps({"pruned_cfg": str(path), "cfg": list(result.widths), **report}))


def _system(name: str) -> System:
    return System(
        name=name,
        make_loss=DIMLoss.from_config,
        output="alpha",
        validation="matting",
        best_metric="SAD",
        best_mode="min",
        infer=infer,
        trainable=trainable,
        configure=configure,
        warm_start=warm_start,
        export=export,
        converters=("dim",),
        inputs=("image", "trimap"),
        grad_transform=grad_transform,
        finish=finish,
        example=example,
        augment=augment,
        open_split=open_split,
    )


DIM_SYSTEM = register_system(_system("dim"))
DIM_STUDENT_SYSTEM = register_system(_system("dim_student"))
