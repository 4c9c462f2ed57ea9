"""TwinSwin-Matte and TSR-Matte as systems: loss, trainable parameters, teacher, warm start and export.

Run-config sections read here (added by `recipe.tsr_sections`): ``teacher`` (off | random | pretrained, weight, the
pretraining recipe) and ``loss`` (L1 / gradient / SSIM weights, refined-probability clamp, TwinSwin loss mode).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from jaxmatte import losses
from jaxmatte.highres import TwoStage
from jaxmatte.models.tsr import teacher as teacher_lib
from jaxmatte.models.tsr.modeling import TwinSwinConfig
from jaxmatte.pretrained import is_model_dir, save_pretrained
from jaxmatte.registry import System, register_system
from jaxmatte.train.warm_start import fill_part, load_directory

logger = logging.getLogger(__name__)

TEACHER_MODES = ("off", "random", "pretrained")
MODEL_FAMILIES = ("tsr", "twinswin")


@dataclasses.dataclass(frozen=True)
class TSRLoss:
    """Static loss settings; ``loss(model, batch)`` runs the model on ``batch["image"]`` against ``batch["mask"]``."""

    family: str
    w_l1: float
    w_grad: float
    w_ssim: float
    w_feat: float
    clamp_refined: bool
    mode: str

    @classmethod
    def from_config(cls, config: Any) -> TSRLoss:
        w_feat = float(config.teacher.weight) if config.teacher.mode != "off" else 0.0
        loss = config.loss
        return cls(
            config.model.family,
            float(loss.w_l1),
            float(loss.w_grad),
            float(loss.w_ssim),
            w_feat,
            bool(loss.clamp_refined),
            str(loss.mode),
        )

    def __call__(self, model: nnx.Module, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        mask = batch["mask"]
        output = model(batch["image"])
        student_feats = teacher_feats = None
        if self.w_feat:
            student_feats = (output.d1, output.d2)
            teacher_feats = model.teacher_features(mask)
        weights = {"w_l1": self.w_l1, "w_grad": self.w_grad, "w_ssim": self.w_ssim, "w_feat": self.w_feat}
        if self.family == "tsr":
            return losses.tsr_loss(
                output.coarse_logits,
                output.refined_logits,
                mask,
                student_feats,
                teacher_feats,
                clamp_refined=self.clamp_refined,
                **weights,
            )
        return losses.twinswin_loss(output.logits, mask, student_feats, teacher_feats, mode=self.mode, **weights)


def infer(model: nnx.Module, images: jax.Array) -> jax.Array:
    return model(images).alpha


def coarse_logits(model: nnx.Module, images: jax.Array) -> jax.Array:
    """High-resolution mode, coarse stage: the student's logits on the canvas (B, S, S, 1)."""
    return model.student(images).logits


def refine_tile(model: nnx.Module, image: jax.Array, logits: jax.Array) -> jax.Array:
    """High-resolution mode, refine stage: sigmoid(coarse probability + Δ) of a full-resolution image tile and its
    coarse logits (restored to the photo's size, then cut like the image), as `TSRMatte` computes it on the canvas."""
    return jax.nn.sigmoid(model.refiner(image, jax.nn.sigmoid(logits)))


def refiner_halo(model: nnx.Module) -> int:
    return model.config.refiner.receptive_radius


# The student's logits are brought to the photo's size; the refiner is fully convolutional (zero padding, no global
# operation), so it runs tile by tile at full resolution.
HIGH_RES = TwoStage(coarse=coarse_logits, refine=refine_tile, halo=refiner_halo)


def trainable(model: nnx.Module) -> Any:
    return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("teacher")))


def configure(arch: TwinSwinConfig, config: Any) -> TwinSwinConfig:
    """Attach the teacher that ``config.teacher`` asks for."""
    t = config.teacher
    if t.mode not in TEACHER_MODES:
        raise ValueError(f"teacher.mode must be one of {TEACHER_MODES}, got {t.mode!r}")
    if t.path and t.mode != "pretrained":
        raise ValueError(f"teacher.path is only read with teacher.mode='pretrained' (mode is {t.mode!r})")
    if t.mode == "off":
        return arch
    arch = arch.with_teacher(init_seed=int(t.seed), relu_outputs=t.mode == "pretrained")
    if t.path:
        teacher_lib.check(t.path, arch.teacher)
    return arch


def warm_start(model: nnx.Module, config: Any) -> None:
    """`model.backbone_weights`: a converted Swin fills the student's backbone; `model.init_from`: a TwinSwin / TSR
    directory fills the student and, where both have one, the refiner."""
    from jaxmatte.train.config import customised_backbone

    backbone, init_from = config.model.backbone_weights, config.model.init_from
    if init_from:
        source = load_directory(init_from, MODEL_FAMILIES, "model.init_from")
        fill_part(model.student, init_from, source.student, "student")
        if getattr(model, "refiner", None) is not None:
            if getattr(source, "refiner", None) is None:
                logger.warning("%s has no refiner: the refiner starts from random weights", init_from)
            else:
                fill_part(model.refiner, init_from, source.refiner, "refiner")
    elif backbone:
        hint = " converted with `python port/convert.py swin`"
        source = load_directory(backbone, ("swin",), "model.backbone_weights", hint)
        fill_part(model.student.backbone, backbone, source, "backbone")
    elif not customised_backbone(config):
        logger.warning(
            "model.backbone_weights is not set: the %s Swin backbone starts from random weights. The original recipe "
            "starts from ImageNet weights (convert them with `python port/convert.py swin`).",
            config.model.preset,
        )


def prepare(trainer: Any, model: nnx.Module) -> None:
    """A fresh ``pretrained``-teacher run fills `model.teacher`: from `teacher.path`, from ``teacher/`` in the
    workdir (an earlier attempt of this run), or trained now on the training masks and saved there."""
    config = trainer.config
    if config.teacher.mode != "pretrained":
        return
    expected = trainer.model_config.teacher
    saved = trainer.workdir / teacher_lib.TEACHER_DIR
    path = config.teacher.path
    source = Path(path) if path else saved if is_model_dir(saved) else None
    if source is not None:
        trained = teacher_lib.load(source, expected)
        logger.info("teacher loaded from %s", source)
    else:
        trained = model.teacher
        train_teacher(trainer, trained, model.student.safe_size, saved)
    nnx.update(model.teacher, nnx.state(trained))


def train_teacher(trainer: Any, teacher: Any, safe_size: int, directory: Path) -> None:
    """`teacher_lib.pretrain` on the run's training masks; logs to ``teacher.csv``, saves to `directory`."""
    from jaxmatte.data.pipeline import make_dataset, make_iterator
    from jaxmatte.train.logs import append_csv

    config, t = trainer.config, trainer.config.teacher
    devices = trainer.mesh.devices.size
    if int(t.batch_size) % devices:
        raise ValueError(f"teacher.batch_size {t.batch_size} does not split over {devices} devices")
    dataset = make_dataset(
        trainer.train_source,
        trainer.policy,
        train=True,
        batch_size=int(t.batch_size),
        seed=config.seed + 1,
        augment=trainer.augment,
    )
    val = make_dataset(trainer.val_source, trainer.policy, train=False, batch_size=trainer.val_batch_size)
    recipe = teacher_lib.TeacherRecipe(
        int(t.steps), float(t.lr), float(t.weight_decay), int(t.seed) + 1, int(config.train.log_every)
    )
    csv_path = trainer.workdir / "teacher.csv"
    csv_path.unlink(missing_ok=True)

    def log(step: int, terms: dict[str, float]) -> None:
        append_csv(csv_path, {"step": step, **terms})
        logger.info("teacher step %d/%d: loss %.4f, IoU %.4f", step, recipe.steps, terms["total"], terms["iou"])

    batches = make_iterator(dataset, workers=int(config.data.workers), prefetch=int(config.data.get("prefetch", 4)))
    try:
        val_terms = teacher_lib.pretrain(
            teacher,
            trainer.model_config.teacher,
            safe_size,
            batches,
            (val[i] for i in range(len(val))),
            recipe,
            trainer.mesh,
            log=log,
        )
    finally:
        getattr(batches, "close", lambda: None)()
    logger.info("teacher validation: %s", " ".join(f"{k} {v:.4f}" for k, v in val_terms.items()))
    info = {"steps": recipe.steps, "seed": recipe.seed, "val": val_terms, "train_roots": trainer.train_roots}
    save_pretrained(teacher, trainer.model_config.teacher, directory, info=info)


def export(model: nnx.Module, arch: TwinSwinConfig) -> tuple[nnx.Module, TwinSwinConfig]:
    """The model without its teacher (a training aid only)."""
    if getattr(model, "teacher", None) is not None:
        model.teacher = None
        arch = dataclasses.replace(arch, teacher=None)
    return model, arch


def _system(name: str) -> System:
    return System(
        name=name,
        make_loss=TSRLoss.from_config,
        output="alpha",
        validation="dis",
        best_metric="maxFm",
        best_mode="max",
        infer=infer,
        trainable=trainable,
        configure=configure,
        warm_start=warm_start,
        prepare=prepare,
        export=export,
        converters=(name,),
        high_res=HIGH_RES if name == "tsr" else None,  # TwinSwin has no refine stage
    )


TWINSWIN = register_system(_system("twinswin"))
TSR = register_system(_system("tsr"))
