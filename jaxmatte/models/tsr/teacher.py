"""The ``pretrained`` teacher: the mask FPN first learns to reconstruct ground-truth masks, then is frozen.

Each alignment feature (p2 at S/16 and p1 at S/8 of the safe size S) feeds a sub-pixel readout: a per-cell MLP to
r² logits, rearranged into the r x r mask patch of its cell (r = 16 and 8). The readout seeing one cell's feature
vector only, the mask's structure has to be held by the features themselves, which is what the student is then aligned
with. Both readouts are trained with the structure loss (weighted BCE + weighted IoU) against the mask at S. The
teacher's BatchNorm statistics are calibrated on the masks meanwhile; afterwards its outputs are rescaled to unit
root-mean-square (`normalise_output_scale`).

The teacher of a `pretrained` run is trained once, before the first student step, and saved as ``<workdir>/teacher``
(a `save_pretrained` directory, family ``tsr_teacher``); from then on it is part of the run's checkpoints like the
`random` teacher. `teacher.path` names such a directory to reuse instead of training a new teacher.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxmatte import losses
from jaxmatte.models.tsr.modeling import FrozenBatchNorm, MaskEncoder, MaskEncoderConfig, conv
from jaxmatte.ops import resize_nearest
from jaxmatte.pretrained import load_pretrained, read_config
from jaxmatte.train.mesh import replicate, shard_batch

logger = logging.getLogger(__name__)

TEACHER_DIR = "teacher"
P2_CELL, P1_CELL = 16, 8
SCALE_BATCHES = 8  # training batches over which the output scale is measured


def depth_to_space(x: jax.Array, cell: int) -> jax.Array:
    """(B, h, w, cell²) -> (B, h·cell, w·cell, 1), channel k going to row k // cell, column k % cell of its cell."""
    b, h, w, c = x.shape
    if c != cell * cell:
        raise ValueError(f"depth_to_space needs {cell * cell} channels, got {c}")
    x = x.reshape(b, h, w, cell, cell).transpose(0, 1, 3, 2, 4)
    return x.reshape(b, h * cell, w * cell, 1)


class CellDecoder(nnx.Module):
    """Per-cell MLP (1x1 conv -> GELU -> 1x1 conv) from a feature vector to the logits of its cell x cell patch."""

    def __init__(self, in_features: int, cell: int, *, dtype: Any, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": jnp.float32, "rngs": rngs}
        self.cell = cell
        self.hidden = conv(in_features, cell * cell, 1, bias=True, **kw)
        self.out = conv(cell * cell, cell * cell, 1, bias=True, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.out(jax.nn.gelu(self.hidden(x), approximate=False))
        return depth_to_space(x.astype(jnp.float32), self.cell)


class MaskReadout(nnx.Module):
    """Cell decoders of p2 (cell 16) and p1 (cell 8) -> two mask logits at 16·h2 = 8·h1 = S."""

    def __init__(self, config: MaskEncoderConfig, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        self.from_p2 = CellDecoder(config.dims[2], P2_CELL, dtype=dtype, rngs=rngs)
        self.from_p1 = CellDecoder(config.dims[1], P1_CELL, dtype=dtype, rngs=rngs)

    def __call__(self, p2: jax.Array, p1: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.from_p2(p2), self.from_p1(p1)


class MaskAutoencoder(nnx.Module):
    """`teacher` (the `MaskEncoder` being trained) and its `readout`."""

    def __init__(self, teacher: MaskEncoder, readout: MaskReadout, safe_size: int):
        self.teacher = teacher
        self.readout = readout
        self.safe_size = safe_size

    def __call__(self, mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """mask (B, H, W, 1) in [0, 1] -> (mask at S, p2 readout logits, p1 readout logits)."""
        target = resize_nearest(mask.astype(jnp.float32), (self.safe_size, self.safe_size))
        return target, *self.readout(*self.teacher(target))


def reconstruction_terms(model: MaskAutoencoder, mask: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Structure loss of both readouts; terms ``p2``, ``p1``, ``total`` and the hard IoU of the p1 readout ``iou``."""
    target, logits2, logits1 = model(mask)
    p2, p1 = losses.structure(logits2, target), losses.structure(logits1, target)
    hard, truth = logits1 > 0, target > 0.5
    inter = jnp.sum(hard & truth, axis=(1, 2, 3))
    union = jnp.sum(hard | truth, axis=(1, 2, 3))
    iou = jnp.mean(jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0))
    return p2 + p1, {"p2": p2, "p1": p1, "total": p2 + p1, "iou": iou}


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2, 3, 4))
def _step(graphdef, tx, params, opt_state, rest, mask):
    def loss_fn(params):
        model = nnx.merge(graphdef, params, rest, copy=True)
        total, terms = reconstruction_terms(model, mask)
        return total, (terms, nnx.state(model, nnx.Not(nnx.Param)))

    (_, (terms, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, rest, terms


def set_calibrating(module: nnx.Module, value: bool) -> None:
    """Switch every `FrozenBatchNorm` in `module` to (or from) batch statistics with running updates."""
    for _, child in nnx.iter_modules(module):
        if isinstance(child, FrozenBatchNorm):
            child.calibrating = value


@functools.partial(jax.jit, static_argnums=(0,))
def _evaluate(graphdef, params, rest, mask):
    return reconstruction_terms(nnx.merge(graphdef, params, rest), mask)[1]


@dataclasses.dataclass(frozen=True)
class TeacherRecipe:
    steps: int
    lr: float
    weight_decay: float
    seed: int
    log_every: int = 50


def pretrain(
    teacher: MaskEncoder,
    config: MaskEncoderConfig,
    safe_size: int,
    train_batches: Iterator[dict[str, Any]],
    val_batches: Iterable[dict[str, Any]],
    recipe: TeacherRecipe,
    mesh: Mesh,
    *,
    log: Any = None,
) -> dict[str, float]:
    """Train `teacher` in place on `train_batches` masks (AdamW, cosine decay), then normalise its output scale;
    returns the validation terms and the output RMS before normalisation.

    `log(step, terms)` is called every `recipe.log_every` steps and at the end.
    """
    readout = MaskReadout(config, rngs=nnx.Rngs(recipe.seed), dtype=teacher.stem.conv.dtype)
    model = MaskAutoencoder(teacher, readout, safe_size)
    set_calibrating(teacher, True)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    set_calibrating(teacher, False)
    schedule = optax.cosine_decay_schedule(recipe.lr, max(1, recipe.steps), alpha=0.01)
    tx = optax.adamw(schedule, weight_decay=recipe.weight_decay)
    params, rest = replicate((params, rest), mesh)
    opt_state = replicate(tx.init(params), mesh)
    for step in range(1, recipe.steps + 1):
        mask = shard_batch({"mask": next(train_batches)["mask"]}, mesh)["mask"]
        params, opt_state, rest, terms = _step(graphdef, tx, params, opt_state, rest, mask)
        if log is not None and (step % recipe.log_every == 0 or step == recipe.steps):
            log(step, {key: float(value) for key, value in terms.items()})
    nnx.update(model, params, rest)
    val_terms = evaluate(model, val_batches, mesh)
    scale_masks = [next(train_batches)["mask"] for _ in range(SCALE_BATCHES)]
    rms = normalise_output_scale(teacher, scale_masks, safe_size)
    return {**val_terms, "p2_rms": rms[0], "p1_rms": rms[1]}


@nnx.jit
def _output_power(teacher: MaskEncoder, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    p2, p1 = teacher(mask)
    return jnp.mean(jnp.square(p2)), jnp.mean(jnp.square(p1))


def normalise_output_scale(teacher: MaskEncoder, masks: list[np.ndarray], safe_size: int) -> tuple[float, float]:
    """Rescale the teacher's output convolutions so that p2 and p1 have unit root-mean-square over `masks`.

    The alignment loss then weighs the teacher's structure on the scale of the student's normalised features
    (unit RMS) instead of whatever scale reconstruction left. `lat2_to_1` absorbs the inverse of p2's factor, so p1
    depends on the mask exactly as before. Returns the RMS values found (before rescaling).
    """
    powers = []
    for mask in masks:
        target = resize_nearest(jnp.asarray(mask, jnp.float32), (safe_size, safe_size))
        powers.append([float(v) for v in _output_power(teacher, target)])
    rms2, rms1 = (float(np.sqrt(np.mean(column))) for column in zip(*powers, strict=True))
    if not (rms2 > 0 and rms1 > 0):
        raise ValueError(f"the trained teacher's outputs are all zero (RMS p2 {rms2}, p1 {rms1}); lower teacher.lr")
    teacher.smooth2.kernel[...] /= rms2
    teacher.smooth2.bias[...] /= rms2
    teacher.lat2_to_1.kernel[...] *= rms2
    teacher.smooth1.kernel[...] /= rms1
    teacher.smooth1.bias[...] /= rms1
    return rms2, rms1


def evaluate(model: MaskAutoencoder, batches: Iterable[dict[str, Any]], mesh: Mesh) -> dict[str, float]:
    """Mean reconstruction terms over `batches` (their ``valid`` entries only)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    totals: dict[str, float] = {}
    count = 0
    for batch in batches:
        valid = np.flatnonzero(batch["valid"]) if "valid" in batch else np.arange(len(batch["mask"]))
        for index in valid:  # one image at a time: padded entries never enter a mean
            mask = np.repeat(batch["mask"][index : index + 1], mesh.devices.size, axis=0)
            terms = _evaluate(graphdef, params, rest, shard_batch({"mask": mask}, mesh)["mask"])
            for key, value in terms.items():
                totals[key] = totals.get(key, 0.0) + float(value)
            count += 1
    return {key: value / max(count, 1) for key, value in totals.items()}


def check(directory: str | Path, expected: MaskEncoderConfig) -> None:
    """Raise unless `directory` holds a saved teacher with the widths and output activation the run's student needs."""
    family, found, _ = read_config(directory)
    if family != "tsr_teacher":
        raise ValueError(f"{directory}: holds a {family!r} model, not a mask teacher (family 'tsr_teacher')")
    if dataclasses.replace(found, init_seed=expected.init_seed) != expected:
        raise ValueError(
            f"{directory}: teacher widths {found.dims} (relu_outputs={found.relu_outputs}) do not fit this run's "
            f"student, which needs {expected.dims} (relu_outputs={expected.relu_outputs})"
        )


def load(directory: str | Path, expected: MaskEncoderConfig) -> MaskEncoder:
    """A teacher saved by `save_pretrained`, checked with `check`."""
    check(directory, expected)
    return load_pretrained(directory)
