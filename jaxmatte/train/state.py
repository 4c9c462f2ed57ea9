"""Model construction, the optimizer and the jitted train / eval steps, for any registered system.

The train state is a plain pytree ``TrainState(params, rest, opt)``: `params` are the trainable parameters (the
system's `trainable` filter; every `nnx.Param` by default), `rest` everything else of the model (frozen parts,
BatchNorm statistics, drop-path RNG streams), `opt` the optax state. Steps are module-level `jax.jit` functions with
the model's graph definition, the optax transformation and the system's loss object as static arguments, so two
trainers with the same configuration share one compilation.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from jaxmatte import registry
from jaxmatte.train import param_groups
from jaxmatte.train.config import base_config, customised_backbone, model_config

__all__ = [
    "TrainState",
    "all_finite",
    "base_config",
    "build_model",
    "compute_dtype",
    "compute_loss",
    "customised_backbone",
    "drop_partial_accumulation",
    "epoch_schedule",
    "eval_graphdef",
    "init_state",
    "learning_rate",
    "make_loss",
    "make_optimizer",
    "merged_model",
    "model_config",
    "predict_step",
    "split_model",
    "train_step",
]


def compute_dtype(name: str) -> Any:
    if name == "auto":
        return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"train.compute_dtype must be auto, float32 or bfloat16, got {name!r}")
    return jnp.dtype(name)


def build_model(config: ml_collections.ConfigDict, arch: Any) -> nnx.Module:
    """The model in training mode: fp32 parameters, compute in `train.compute_dtype`."""
    model_cls = registry.system(config.model.family).model_cls
    model = model_cls(
        arch,
        rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1, rope=config.seed + 2),
        dtype=compute_dtype(config.train.compute_dtype),
    )
    model.train()
    return model


def make_loss(config: ml_collections.ConfigDict) -> Any:
    """The system's loss object for this run: ``loss(model, batch) -> (total, terms)``, hashable."""
    return registry.system(config.model.family).make_loss(config)


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


def multistep_schedule(
    lr: float,
    milestones: tuple[int, ...],
    gamma: float,
    steps_per_epoch: int,
    accum: int = 1,
    drop_partial: bool = False,
) -> optax.Schedule:
    """PyTorch's MultiStepLR stepped per epoch: lr x gamma^(number of `milestones` (epochs) reached), the epoch of an
    update counted as in `epoch_schedule`."""
    steps_per_epoch, accum = max(1, steps_per_epoch), max(1, accum)
    full_updates = max(1, steps_per_epoch // accum)
    bounds = jnp.asarray(sorted(milestones) or [2**30], dtype=jnp.int32)

    def schedule(count):
        epoch = count // full_updates if drop_partial else ((count + 1) * accum - 1) // steps_per_epoch
        reached = jnp.sum(epoch >= bounds) if milestones else 0
        return lr * jnp.power(jnp.float32(gamma), reached)

    return schedule


def _schedule(optim_values: tuple, steps_per_epoch: int, accum: int) -> optax.Schedule:
    kind, lr, eta_min, epochs, warmup, milestones, gamma, drop_partial = optim_values
    if kind == "cosine":
        return epoch_schedule(lr, eta_min, epochs, steps_per_epoch, accum, warmup, drop_partial)
    if kind == "multistep":
        if warmup:
            raise ValueError("optim.warmup_epochs is only supported with the cosine schedule")
        return multistep_schedule(lr, milestones, gamma, steps_per_epoch, accum, drop_partial)
    raise ValueError(f"optim.schedule must be 'cosine' or 'multistep', got {kind!r}")


@functools.lru_cache(maxsize=16)
def _optimizer(
    schedule_values, steps_per_epoch, wd, b1, b2, eps, clip, accum, decay_on, layers, clip_value, pre
) -> optax.GradientTransformation:
    schedule = _schedule(schedule_values, steps_per_epoch, accum)
    mask = param_groups.decay_mask if decay_on == "matrices" else None
    adam = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=mask)
    if layers is not None:
        adam = optax.chain(adam, param_groups.scale_by_layer(*layers))
    tx = optax.chain(optax.clip_by_global_norm(clip), adam) if clip > 0 else adam
    if clip_value > 0:
        tx = optax.chain(optax.clip(clip_value), tx)
    if pre is not None:
        tx = optax.chain(pre, tx)
    if accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accum).gradient_transformation()
    return tx


def make_optimizer(
    optim: ml_collections.ConfigDict,
    steps_per_epoch: int,
    lr_layers: tuple | None = None,
    grad_transform: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
    """[`grad_transform` (a system's, on the raw gradients) ->] [elementwise clip to +-`clip_value` (> 0) ->]
    clip_by_global_norm (unless `clip_norm` <= 0) + AdamW (Adam at weight decay 0) with the per-epoch
    `optim.schedule` (cosine: `epoch_schedule`; multistep: `multistep_schedule` over `milestones` with `gamma`),
    wrapped in MultiSteps for `accum_steps` > 1.

    `optim.weight_decay_on`: "all" parameters, or "matrices" (`param_groups.decay_mask`). `optim.layer_decay` < 1
    scales each parameter's step by its layer (`param_groups.scale_by_layer`) and needs the system's
    ``lr_layers = (layer_of, top)``.

    One call per micro-batch; an update is applied every `accum_steps` micro-batches. The same settings return the
    same object (so jitted steps are reused). Non-finite steps are not the optimizer's business: `train_step` skips
    them as a whole (`optim.skip_nonfinite`).
    """
    accum = int(optim.accum_steps)
    if accum < 1:
        raise ValueError(f"optim.accum_steps must be >= 1, got {accum}")
    decay_on = str(optim.get("weight_decay_on", "all"))
    if decay_on not in ("all", "matrices"):
        raise ValueError(f"optim.weight_decay_on must be 'all' or 'matrices', got {decay_on!r}")
    layer_decay = float(optim.get("layer_decay", 1.0))
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"optim.layer_decay must be in (0, 1] (1: off), got {layer_decay}")
    layers = None
    if layer_decay < 1.0:
        if lr_layers is None:
            raise ValueError("optim.layer_decay < 1 needs a system with layer-wise groups (System.lr_layers)")
        layers = (*lr_layers, layer_decay)
    return _optimizer(
        _schedule_values(optim),
        int(steps_per_epoch),
        float(optim.weight_decay),
        float(optim.b1),
        float(optim.b2),
        float(optim.eps),
        float(optim.clip_norm),
        accum,
        decay_on,
        layers,
        float(optim.get("clip_value", 0.0)),
        grad_transform,
    )


def _schedule_values(optim: ml_collections.ConfigDict) -> tuple:
    return (
        str(optim.get("schedule", "cosine")),
        float(optim.lr),
        float(optim.eta_min),
        int(optim.epochs),
        int(optim.warmup_epochs),
        tuple(int(m) for m in optim.get("milestones", ())),
        float(optim.get("gamma", 0.1)),
        bool(optim.drop_partial_accumulation),
    )


def learning_rate(optim: ml_collections.ConfigDict, steps_per_epoch: int, micro_step: int) -> float:
    """The learning rate in force at a micro-batch (for logging)."""
    accum = int(optim.accum_steps)
    return float(_schedule(_schedule_values(optim), steps_per_epoch, accum)(micro_step // accum))


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


def trainable_filter(model: nnx.Module) -> Any:
    """The nnx filter of the parameters the optimizer updates (the system's `trainable`, else every Param)."""
    hook = registry.system(model.family).trainable
    return nnx.Param if hook is None else hook(model)


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, trainable params, everything else)."""
    return nnx.split(model, trainable_filter(model), ...)


def init_state(model: nnx.Module, tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState]:
    graphdef, params, rest = split_model(model)
    return graphdef, TrainState(params, rest, tx.init(params))


def compute_loss(loss: Any, model: nnx.Module, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(total, terms) of `model` on `batch` under the system's `loss`."""
    return loss(model, batch)


def _finite_leaves(tree: Any) -> jax.Array:
    """Whether every floating-point leaf of `tree` is finite (a scalar bool)."""
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


@jax.jit
def all_finite(tree: Any) -> jax.Array:
    """Whether every floating-point array of `tree` (a train state, parameters) is finite."""
    return _finite_leaves(tree)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), static_argnames=("skip_nonfinite",), donate_argnums=(3,))
def train_step(graphdef, tx, loss: Any, state: TrainState, batch: dict[str, jax.Array], skip_nonfinite: bool = True):
    """One micro-batch: loss, gradients of the trainable parameters, optax update. Returns (state, terms).

    A step is non-finite when its loss, its gradient norm or the state it produces (parameters, BatchNorm statistics)
    is not finite; ``terms["nonfinite"]`` is then 1. With `skip_nonfinite` such a step leaves the whole state as it
    was (parameters, optimizer state with any partial accumulation, the rest of the model state), so the next
    micro-batch takes its place.
    """

    def loss_fn(params):
        model = nnx.merge(graphdef, params, state.rest, copy=True)
        total, terms = compute_loss(loss, model, batch)
        _, _, rest = split_model(model)
        return total, (terms, rest)

    (total, (terms, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    updates, opt = tx.update(grads, state.opt, state.params)
    params = optax.apply_updates(state.params, updates)
    new = TrainState(params, rest, opt)
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm) & _finite_leaves((params, rest))
    if skip_nonfinite:
        new = jax.lax.cond(finite, lambda: new, lambda: state)
    terms = {**terms, "grad_norm": grad_norm, "nonfinite": jnp.logical_not(finite).astype(jnp.float32)}
    return new, terms


@functools.partial(jax.jit, static_argnums=(0,))
def predict_step(eval_graphdef, params, rest, *inputs):
    """The system's output (`System.infer(model, *inputs)`, e.g. alpha (B, H, W, 1) float32) in eval mode."""
    model = nnx.merge(eval_graphdef, params, rest)
    return registry.system(model.family).infer(model, *inputs)


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
