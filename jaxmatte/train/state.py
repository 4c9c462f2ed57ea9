"""Run configuration skeleton, model construction, the optimizer and the jitted train / eval steps.

The train state is a plain pytree ``TrainState(params, rest, opt)``: `params` are the trainable parameters
(`TRAINABLE`: every `nnx.Param` outside the teacher), `rest` everything else of the model (teacher, BatchNorm
statistics, drop-path RNG streams), `opt` the optax state. Steps are module-level `jax.jit` functions with the
model's graph definition, the optax transformation and a `LossSpec` as static arguments, so two trainers with the same
configuration share one compilation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from ml_collections import config_dict

from jaxmatte import losses
from jaxmatte.models.tsr import modeling

TRAINABLE = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("teacher")))
FAMILIES = {
    "tsr": (modeling.TSRConfig, modeling.TSRMatte),
    "twinswin": (modeling.TwinSwinConfig, modeling.TwinSwinMatte),
}
TEACHER_MODES = ("off", "random", "pretrained")


def base_config(family: str) -> ml_collections.ConfigDict:
    """Every field a run understands, with the real DIS5K recipe's values; configs/*.py change what they need.

    Model fields left None take the preset's value.
    """
    if family not in FAMILIES:
        raise KeyError(f"unknown family {family!r}; known: {sorted(FAMILIES)}")
    c = ml_collections.ConfigDict()
    c.name = family
    c.variant = "default"
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.family = family
    c.model.preset = "base"
    c.model.safe_size = config_dict.placeholder(int)
    c.model.drop_path_rate = config_dict.placeholder(float)
    c.model.embed_dim = config_dict.placeholder(int)
    c.model.depths = config_dict.placeholder(tuple)
    c.model.num_heads = config_dict.placeholder(tuple)
    c.model.window_size = config_dict.placeholder(int)
    c.model.decoder_channels = config_dict.placeholder(tuple)
    c.model.head_channels = config_dict.placeholder(tuple)
    c.model.refiner_mid_channels = config_dict.placeholder(int)
    c.model.refiner_num_blocks = config_dict.placeholder(int)
    c.model.detach_coarse = False
    c.model.backbone_weights = ""  # a Swin directory from `port/convert.py swin` (ImageNet weights) for a fresh run
    c.model.init_from = ""  # a TwinSwin / TSR directory (release or export) whose student (+ refiner) start a fresh run

    c.teacher = ml_collections.ConfigDict()
    # off | random (torch-style init from `seed`, frozen) | pretrained (first trained to reconstruct masks, then
    # frozen; jaxmatte/train/teacher.py)
    c.teacher.mode = "off"
    c.teacher.seed = 0
    c.teacher.weight = 0.2
    c.teacher.path = ""  # pretrained: reuse this saved teacher directory instead of training one
    c.teacher.steps = 2000
    c.teacher.batch_size = 8
    c.teacher.lr = 3e-3
    c.teacher.weight_decay = 1e-4

    c.loss = ml_collections.ConfigDict()
    c.loss.w_l1 = 1.0
    c.loss.w_grad = 1.0
    c.loss.w_ssim = 0.5
    c.loss.clamp_refined = False
    c.loss.mode = "matting"  # twinswin only: matting | locator

    c.data = ml_collections.ConfigDict()
    c.data.train_roots = ["DIS5K/DIS-TR"]
    c.data.val_roots = ["DIS5K/DIS-VD"]
    c.data.synthetic_root = ""  # non-empty: write synthetic data there and train / validate on it
    c.data.synthetic_train = 96
    c.data.synthetic_val = 16
    c.data.synthetic_size = (192, 320)
    c.data.size = 1024
    c.data.policy = "letterbox"
    c.data.augment = True
    c.data.workers = 0
    c.data.val_batch_size = 1
    c.data.val_limit = 0  # > 0: validate on the first n images only

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-4
    c.optim.eta_min = 1e-6
    c.optim.warmup_epochs = 0
    c.optim.weight_decay = 1e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.clip_norm = 1.0
    c.optim.epochs = 70
    c.optim.batch_size = 2
    c.optim.accum_steps = 4
    c.optim.skip_nonfinite = False
    c.optim.drop_partial_accumulation = False  # True: discard leftover micro-batches at each epoch end (the original)

    c.train = ml_collections.ConfigDict()
    c.train.steps = 0  # > 0: stop after this many micro-batches instead of `optim.epochs` epochs
    c.train.compute_dtype = "auto"  # auto (bfloat16 on GPU/TPU, float32 on CPU) | float32 | bfloat16
    c.train.log_every = 10
    c.train.val_every = 0  # micro-batches between validations; 0: every epoch
    c.train.val_at_start = False
    c.train.checkpoint_every = 0  # micro-batches between checkpoints; 0: every epoch
    c.train.max_to_keep = 2
    c.train.best_metric = "maxFm"
    c.train.best_mode = "max"
    c.train.sample_count = 4  # validation images in the samples PNG
    c.train.progress = True
    return c


def demo_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The `demo` variant of both families: a small model on synthetic DIS-style data, a few minutes on two CPU cores
    (jit compile included)."""
    m = config.model
    m.preset = "tiny"
    m.embed_dim = 24
    m.depths = (1, 1, 2, 1)
    m.num_heads = (1, 2, 4, 8)
    m.window_size = 6
    m.safe_size = 192
    m.drop_path_rate = 0.0
    m.decoder_channels = (64, 32, 16)
    m.head_channels = (16, 8)
    if m.family == "tsr":
        m.refiner_mid_channels = 16
        m.refiner_num_blocks = 1
    d = config.data
    d.synthetic_root = "runs/data/synthetic"
    d.synthetic_train = 96
    d.synthetic_val = 16
    d.size = 192
    d.val_batch_size = 8
    o = config.optim
    o.lr = 1e-3
    o.eta_min = 1e-5
    o.weight_decay = 1e-4
    o.batch_size = 8
    o.accum_steps = 1
    o.epochs = 12
    o.warmup_epochs = 0
    config.teacher.steps = 600  # used with --config.teacher.mode=pretrained
    t = config.train
    t.compute_dtype = "float32"
    t.log_every = 4
    t.val_at_start = True
    return config


# ---------------------------------------------------------------------------------------------------------------------
# Model


def model_config(config: ml_collections.ConfigDict) -> modeling.TwinSwinConfig:
    """The frozen model config of a run: preset, then the non-None overrides, then the teacher."""
    m = config.model
    config_cls, _ = FAMILIES[m.family]
    base = config_cls.preset(m.preset)
    backbone = {
        key: value
        for key, value in {
            "embed_dim": m.embed_dim,
            "depths": m.depths,
            "num_heads": m.num_heads,
            "window_size": m.window_size,
            "drop_path_rate": m.drop_path_rate,
        }.items()
        if value is not None
    }
    backbone = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in backbone.items()}
    overrides: dict[str, Any] = {
        "backbone": dataclasses.replace(base.backbone, **backbone),
        "img_size": config.data.size,
    }
    for key in ("safe_size", "decoder_channels", "head_channels"):
        value = m[key]
        if value is not None:
            overrides[key] = tuple(value) if isinstance(value, list | tuple) else value
    if m.family == "tsr":
        refiner = {"mid_channels": m.refiner_mid_channels, "num_blocks": m.refiner_num_blocks}
        refiner = {k: v for k, v in refiner.items() if v is not None}
        overrides["refiner"] = dataclasses.replace(base.refiner, **refiner)
        overrides["detach_coarse"] = bool(m.detach_coarse)
    result = dataclasses.replace(base, **overrides)
    if config.teacher.mode not in TEACHER_MODES:
        raise ValueError(f"teacher.mode must be one of {TEACHER_MODES}, got {config.teacher.mode!r}")
    if config.teacher.path and config.teacher.mode != "pretrained":
        raise ValueError(f"teacher.path is only read with teacher.mode='pretrained' (mode is {config.teacher.mode!r})")
    if config.teacher.mode != "off":
        pretrained = config.teacher.mode == "pretrained"
        result = result.with_teacher(init_seed=int(config.teacher.seed), relu_outputs=pretrained)
    return result


def customised_backbone(config: ml_collections.ConfigDict) -> bool:
    """Whether the config changes the preset's Swin architecture (for which no ImageNet weights exist)."""
    m = config.model
    return any(m[key] is not None for key in ("embed_dim", "depths", "num_heads", "window_size"))


def compute_dtype(name: str) -> Any:
    if name == "auto":
        return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"train.compute_dtype must be auto, float32 or bfloat16, got {name!r}")
    return jnp.dtype(name)


def build_model(config: ml_collections.ConfigDict, arch: modeling.TwinSwinConfig) -> nnx.Module:
    """The model in training mode: fp32 parameters, compute in `train.compute_dtype`."""
    _, model_cls = FAMILIES[config.model.family]
    model = model_cls(
        arch,
        rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1),
        dtype=compute_dtype(config.train.compute_dtype),
    )
    model.train()
    return model


# ---------------------------------------------------------------------------------------------------------------------
# Optimizer


def epoch_schedule(
    lr: float,
    eta_min: float,
    epochs: int,
    steps_per_epoch: int,
    accum: int = 1,
    warmup_epochs: int = 0,
    drop_partial: bool = False,
) -> optax.Schedule:
    """Learning rate of optimizer update n: constant within an epoch, cosine over epochs (PyTorch's
    CosineAnnealingLR stepped per epoch), after an optional linear warmup of `warmup_epochs` epochs.

    An update takes `accum` micro-batches of an epoch's `steps_per_epoch`. Update n belongs to the epoch of its last
    micro-batch; with `drop_partial` (the original's reset at each epoch start) an epoch has exactly
    ``steps_per_epoch // accum`` updates.
    """
    steps_per_epoch, accum = max(1, steps_per_epoch), max(1, accum)
    full_updates = max(1, steps_per_epoch // accum)
    span = max(1, epochs - warmup_epochs)

    def schedule(count):
        epoch = count // full_updates if drop_partial else ((count + 1) * accum - 1) // steps_per_epoch
        epoch = jnp.minimum(epoch, epochs - 1).astype(jnp.float32)
        cosine_epoch = jnp.maximum(epoch - warmup_epochs, 0.0)
        cosine = eta_min + (lr - eta_min) * (1.0 + jnp.cos(math.pi * cosine_epoch / span)) / 2.0
        if warmup_epochs <= 0:
            return cosine
        warm = lr * (count + 1) * accum / (warmup_epochs * steps_per_epoch)
        return jnp.where(epoch < warmup_epochs, warm, cosine)

    return schedule


@functools.lru_cache(maxsize=16)
def _optimizer(
    lr, eta_min, epochs, steps_per_epoch, warmup, wd, b1, b2, eps, clip, accum, skip_nonfinite, drop_partial
) -> optax.GradientTransformation:
    schedule = epoch_schedule(lr, eta_min, epochs, steps_per_epoch, accum, warmup, drop_partial)
    tx = optax.chain(optax.clip_by_global_norm(clip), optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=wd))
    if skip_nonfinite:
        tx = optax.apply_if_finite(tx, max_consecutive_errors=1_000_000)
    if accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accum).gradient_transformation()
    return tx


def make_optimizer(optim: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    """clip_by_global_norm + AdamW with `epoch_schedule`, wrapped in MultiSteps for `accum_steps` > 1.

    One call per micro-batch; an update is applied every `accum_steps` micro-batches. The same settings return the
    same object (so jitted steps are reused).
    """
    accum = int(optim.accum_steps)
    if accum < 1:
        raise ValueError(f"optim.accum_steps must be >= 1, got {accum}")
    return _optimizer(
        float(optim.lr),
        float(optim.eta_min),
        int(optim.epochs),
        int(steps_per_epoch),
        int(optim.warmup_epochs),
        float(optim.weight_decay),
        float(optim.b1),
        float(optim.b2),
        float(optim.eps),
        float(optim.clip_norm),
        accum,
        bool(optim.skip_nonfinite),
        bool(optim.drop_partial_accumulation),
    )


def learning_rate(optim: ml_collections.ConfigDict, steps_per_epoch: int, micro_step: int) -> float:
    """The learning rate in force at a micro-batch (for logging)."""
    accum = int(optim.accum_steps)
    schedule = epoch_schedule(
        optim.lr,
        optim.eta_min,
        optim.epochs,
        steps_per_epoch,
        accum,
        optim.warmup_epochs,
        bool(optim.drop_partial_accumulation),
    )
    return float(schedule(micro_step // accum))


@functools.partial(jax.jit, donate_argnums=(0,))
def drop_partial_accumulation(opt_state: Any) -> Any:
    """A `MultiSteps` state with its partly accumulated gradient discarded (the original's reset at epoch start)."""
    if not isinstance(opt_state, optax.MultiStepsState):
        return opt_state
    return opt_state._replace(
        mini_step=jnp.zeros_like(opt_state.mini_step), acc_grads=jax.tree.map(jnp.zeros_like, opt_state.acc_grads)
    )


# ---------------------------------------------------------------------------------------------------------------------
# State and steps


class TrainState(NamedTuple):
    params: nnx.State
    rest: nnx.State
    opt: Any


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """Static loss settings of a step."""

    family: str
    w_l1: float
    w_grad: float
    w_ssim: float
    w_feat: float
    clamp_refined: bool
    mode: str

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> LossSpec:
        w_feat = float(config.teacher.weight) if config.teacher.mode != "off" else 0.0
        loss = config.loss
        return cls(
            config.model.family, loss.w_l1, loss.w_grad, loss.w_ssim, w_feat, bool(loss.clamp_refined), loss.mode
        )


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, trainable params, everything else)."""
    return nnx.split(model, TRAINABLE, ...)


def init_state(model: nnx.Module, tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState]:
    graphdef, params, rest = split_model(model)
    return graphdef, TrainState(params, rest, tx.init(params))


def compute_loss(spec: LossSpec, model: nnx.Module, output: Any, mask: jax.Array):
    student_feats = teacher_feats = None
    if spec.w_feat:
        student_feats = (output.d1, output.d2)
        teacher_feats = model.teacher_features(mask)
    weights = {"w_l1": spec.w_l1, "w_grad": spec.w_grad, "w_ssim": spec.w_ssim, "w_feat": spec.w_feat}
    if spec.family == "tsr":
        return losses.tsr_loss(
            output.coarse_logits,
            output.refined_logits,
            mask,
            student_feats,
            teacher_feats,
            clamp_refined=spec.clamp_refined,
            **weights,
        )
    return losses.twinswin_loss(output.logits, mask, student_feats, teacher_feats, mode=spec.mode, **weights)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(3,))
def train_step(graphdef, tx, spec: LossSpec, state: TrainState, batch: dict[str, jax.Array]):
    """One micro-batch: loss, gradients of the trainable parameters, optax update. Returns (state, terms)."""

    def loss_fn(params):
        model = nnx.merge(graphdef, params, state.rest, copy=True)
        output = model(batch["image"])
        total, terms = compute_loss(spec, model, output, batch["mask"])
        _, _, rest = split_model(model)
        return total, (terms, rest)

    (_, (terms, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt = tx.update(grads, state.opt, state.params)
    params = optax.apply_updates(state.params, updates)
    terms = {**terms, "grad_norm": optax.tree.norm(grads)}
    return TrainState(params, rest, opt), terms


@functools.partial(jax.jit, static_argnums=(0,))
def predict_step(eval_graphdef, params, rest, images):
    """Alpha (B, H, W, 1) float32 of the model in eval mode."""
    return nnx.merge(eval_graphdef, params, rest)(images).alpha


def eval_graphdef(graphdef: nnx.GraphDef, state: TrainState) -> nnx.GraphDef:
    """The graph definition of the same model in eval mode (running BN statistics, no drop path)."""
    model = nnx.merge(graphdef, state.params, state.rest)
    model.eval()
    return nnx.graphdef(model)


def merged_model(graphdef: nnx.GraphDef, state: TrainState) -> nnx.Module:
    """A concrete model (eval mode) holding copies of the state's values."""
    params, rest = jax.tree.map(jnp.array, (state.params, state.rest))
    model = nnx.merge(graphdef, params, rest)
    model.eval()
    return model
