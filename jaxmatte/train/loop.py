"""The training loop, the same for every system: data, data-parallel steps, validation, checkpoints and exports.

`load_config("configs/tsr.py:demo", ["model.preset=tiny"])` reads a config; `Trainer(config, workdir).train()` runs
it. A workdir holds ``config.json``, ``checkpoints/`` (Orbax; the run resumes from the newest one), ``best/`` and
``last/`` (`save_pretrained` directories that `load_pretrained` and predict.py read), the logs of
`jaxmatte.train.logs` and ``samples/``.

What differs between systems comes from the registry (`jaxmatte.registry.System`): the loss, the trainable
parameters, the validation suite and the metric that picks ``best/``, and the hooks. A fresh run is warm-started
(`model.backbone_weights` / `model.init_from`) while the trainer is built; the system's `prepare` hook (e.g. TSR's
teacher pretraining) runs once before the first step (`Trainer.prepare`).

A step is one micro-batch; an optimizer update happens every `optim.accum_steps` steps. Validation runs at the end of
every epoch (or every `train.val_every` steps) on the validation split: predictions are restored to each image's
original size, quantised to uint8 and scored at the ground truth's resolution.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxmatte import outputs, registry, validation
from jaxmatte.data import ImageReadError, open_folders, write_synthetic_dis, write_synthetic_matting
from jaxmatte.data.composition import write_synthetic_composition
from jaxmatte.data.pipeline import batches_per_epoch, make_dataset, make_iterator
from jaxmatte.data.transforms import Augment, ResizePolicy
from jaxmatte.train import state as train_state
from jaxmatte.train.checkpoint import RunCheckpoints, export, export_info
from jaxmatte.train.config import apply_override, default_workdir, load_config, merge_overrides, resolve_config_path
from jaxmatte.train.logs import RunLog, sample_grid
from jaxmatte.train.mesh import data_mesh, replicate, shard_batch
from jaxmatte.train.warm_start import warm_start

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "apply_override", "default_workdir", "due", "load_config", "resolve_config_path", "run"]


def due(step: int, every: int, *, epoch_end: bool) -> bool:
    """Whether a periodic action (validation, checkpoint) is due after `step`: every `every` steps, or at each epoch
    end when `every` is 0."""
    return step % every == 0 if every else epoch_end


# ---------------------------------------------------------------------------------------------------------------------
# Data


class SkippingSource:
    """A source whose unreadable records are reported (logged with the file) and replaced by the next readable one."""

    def __init__(self, source: Any):
        self.source = source
        self.skipped: set[int] = set()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        for offset in range(len(self.source)):
            candidate = (index + offset) % len(self.source)
            try:
                return self.source[candidate]
            except (ImageReadError, OSError) as err:
                if candidate not in self.skipped:
                    self.skipped.add(candidate)
                    logger.warning("skipping unreadable training record %d: %s", candidate, err)
        raise RuntimeError("no record of the training set can be read")


class Subset:
    """The records `indices` of `source`, in that order."""

    def __init__(self, source: Any, indices: Sequence[int]):
        self.source, self.indices = source, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.indices):
            raise IndexError(index)
        return self.source[self.indices[index]]


def select(source: Any, spec: str, setting: str) -> Any:
    """`source` restricted to the Python slice `spec` ("20:27", ":20", "::5") of its (sorted) records; "" = all."""
    if not spec:
        return source
    parts = spec.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        bounds = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise ValueError(f"{setting} must be a slice such as '0:20' or '20:', got {spec!r}") from None
    indices = range(len(source))[slice(*bounds)]
    if not indices:
        raise ValueError(f"{setting} {spec!r} selects no record of {len(source)}")
    return Subset(source, indices)


def data_roots(config: ml_collections.ConfigDict) -> tuple[list[str], list[str]]:
    """(train roots, val roots); with `data.synthetic_root` the synthetic set (`data.synthetic`: dis | matting |
    composition, i.e. fg / alpha / bg folders) is written (or reused) first."""
    data = config.data
    if data.synthetic_root:
        low, high = data.synthetic_size
        splits = {"train": int(data.synthetic_train), "val": int(data.synthetic_val)}
        if data.synthetic == "dis":
            root = write_synthetic_dis(
                data.synthetic_root, splits=splits, size_range=((low, high), (low, high)), seed=config.seed
            )
        elif data.synthetic == "matting":
            root = write_synthetic_matting(data.synthetic_root, splits=splits, size=(low, high), seed=config.seed)
        elif data.synthetic == "composition":
            root = Path(data.synthetic_root)
            for offset, (split, count) in enumerate(splits.items()):
                write_synthetic_composition(
                    root / split, num_fg=count, num_bg=2 * count, size=(low, high), seed=config.seed + offset
                )
        else:
            raise ValueError(f"data.synthetic must be 'dis', 'matting' or 'composition', got {data.synthetic!r}")
        return [str(root / "train")], [str(root / "val")]
    return list(data.train_roots), list(data.val_roots)


def open_split(roots: list[str], **options: Any) -> Any:
    """The dataset of image / ground-truth folders under `roots` (layouts: `jaxmatte.data.folders`)."""
    return open_folders(roots, **options)


# ---------------------------------------------------------------------------------------------------------------------
# Trainer


class Trainer:
    """One training run in `workdir`; construction builds everything and resumes from the newest checkpoint there."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | Path, *, devices: list[Any] | None = None):
        self.config = config
        self.system = registry.system(config.model.family)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
        self.mesh = data_mesh(devices)
        num_devices = self.mesh.devices.size
        self.batch_size = int(config.optim.batch_size)
        if self.batch_size % num_devices:
            raise ValueError(f"optim.batch_size {self.batch_size} does not split over {num_devices} devices")
        self.val_batch_size = math.ceil(int(config.data.val_batch_size) / num_devices) * num_devices

        data = config.data
        self.train_roots, val_roots = data_roots(config)
        self.policy = ResizePolicy(
            data.policy, int(data.size), resample=data.resample, mask_resample=data.mask_resample
        )
        companions = {"trimap_dir": data.trimap_dir or None, "input_mask_dir": data.input_mask_dir or None}
        opener = self.system.open_split
        if opener is None:
            train_source, val_source = open_split(self.train_roots, **companions), open_split(val_roots, **companions)
        else:
            train_source, val_source = opener(config, self.train_roots, True), opener(config, val_roots, False)
        self.train_source = SkippingSource(select(train_source, data.train_select, "data.train_select"))
        self.val_source: Any = select(val_source, data.val_select, "data.val_select")
        if data.val_limit > 0:
            self.val_source = Subset(self.val_source, range(min(int(data.val_limit), len(self.val_source))))
        self.steps_per_epoch = batches_per_epoch(len(self.train_source), self.batch_size, train=True)
        self.total_steps = int(config.train.steps) or int(config.optim.epochs) * self.steps_per_epoch
        self.augment = None
        if data.augment:
            hook = self.system.augment
            self.augment = merge_overrides(Augment(), data.augmentation) if hook is None else hook(config)
        self.fields = self.system.example(config, self.policy) if self.system.example is not None else None
        dataset = make_dataset(
            self.train_source,
            self.policy,
            train=True,
            batch_size=self.batch_size,
            seed=config.seed,
            augment=self.augment,
            fields=self.fields,
        )
        self.iterator = make_iterator(dataset, workers=int(data.workers))

        self.model_config = train_state.model_config(config)
        model = train_state.build_model(config, self.model_config)
        self.checkpoints = RunCheckpoints(self.workdir, max_to_keep=int(config.train.max_to_keep))
        fresh = self.checkpoints.latest_step() is None
        if fresh:
            warm_start(model, config)
        hook = self.system.lr_layers
        lr_layers = hook(self.model_config) if hook is not None else None
        pre = self.system.grad_transform(config) if self.system.grad_transform is not None else None
        self.tx = train_state.make_optimizer(config.optim, self.steps_per_epoch, lr_layers, pre)
        self.loss = train_state.make_loss(config)
        self._set_model(model)
        self._unprepared = model if fresh and self.system.prepare is not None else None
        self.step = 0
        self.best: float | None = None
        self.last_val: dict[str, float] = {}
        self.history: dict[int, dict[str, float]] = {}

        restored = self.checkpoints.restore_latest(self.state, self.iterator)
        if restored is not None:
            self.step, self.state, record = restored
            self.best = record.get("best")
            self.last_val = record.get("last_val", {})
            logger.info("resumed %s at step %d", self.workdir, self.step)

    def _set_model(self, model: Any) -> None:
        self.graphdef, state = train_state.init_state(model, self.tx)
        self.eval_graphdef = train_state.eval_graphdef(self.graphdef, state)
        self.state = replicate(state, self.mesh)

    def prepare(self) -> None:
        """Run the system's `prepare` hook on a fresh run's model, once, before its first step (no-op otherwise)."""
        if self._unprepared is None:
            return
        model, self._unprepared = self._unprepared, None
        self.system.prepare(self, model)
        self._set_model(model)

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def params(self) -> dict[str, np.ndarray]:
        """Dotted path -> numpy value of every parameter and model-state array (trainable and not) the run holds
        (after the system's preparation)."""
        from flax import nnx

        self.prepare()
        flat = {}
        for part in (self.state.params, self.state.rest):
            for path, value in nnx.to_flat_state(part):
                array = value.get_value() if hasattr(value, "get_value") else value
                if jax.dtypes.issubdtype(array.dtype, jax.dtypes.prng_key):
                    array = jax.random.key_data(array)
                flat[".".join(map(str, path))] = np.asarray(array)
        return flat

    def train(self, until: int | None = None) -> dict[int, dict[str, float]]:
        """Train up to micro-batch `until` (default: the end); returns the loss terms of the steps run now."""
        config, t = self.config, self.config.train
        self.prepare()
        until = self.total_steps if until is None else min(until, self.total_steps)
        log = RunLog(self.workdir, total_steps=self.total_steps, start_step=self.step, progress=bool(t.progress))
        ran: dict[int, dict[str, float]] = {}
        pending: list[tuple[int, Any]] = []
        try:
            if self.step == 0 and t.val_at_start and not (self.workdir / "val.csv").exists():
                self.validate(log)
            while self.step < until:
                batch = shard_batch(next(self.iterator), self.mesh)
                self.state, terms = train_state.train_step(self.graphdef, self.tx, self.loss, self.state, batch)
                self.step += 1
                pending.append((self.step, terms))
                log.advance()
                epoch_end = self.step % self.steps_per_epoch == 0
                if epoch_end and config.optim.drop_partial_accumulation:
                    self.state = self.state._replace(opt=train_state.drop_partial_accumulation(self.state.opt))
                if due(self.step, int(t.log_every), epoch_end=True) or epoch_end or self.step == until:
                    self._log_pending(log, pending, ran)
                if due(self.step, int(t.val_every), epoch_end=epoch_end) or self.step == self.total_steps:
                    self.validate(log)
                if due(self.step, int(t.checkpoint_every), epoch_end=epoch_end) or self.step == until:
                    self.save()
            if self.step >= self.total_steps:
                self.export("last")
                log.message(f"done: {self.step} steps; exported {self.workdir / 'last'}")
                if self.system.finish is not None:
                    self.system.finish(self)
            log.plot(t.best_metric)
        finally:
            log.close()
        self.history.update(ran)
        return ran

    def _log_pending(self, log: RunLog, pending: list[tuple[int, Any]], ran: dict[int, dict[str, float]]) -> None:
        for step, values in jax.device_get(pending):
            ran[step] = {key: float(value) for key, value in values.items()}
            if not all(math.isfinite(v) for v in ran[step].values()):
                log.message(f"step {step}: non-finite loss terms {ran[step]}")
        lr = train_state.learning_rate(self.config.optim, self.steps_per_epoch, self.step - 1)
        log.train(self.step, self.epoch, lr, self.batch_size, ran[self.step])
        pending.clear()

    def save(self) -> None:
        record = {"step": self.step, "best": self.best, "last_val": self.last_val, "time": time.time()}
        self.checkpoints.save(self.step, self.state, self.iterator, record)

    def export(self, name: str) -> Path:
        model = train_state.merged_model(self.graphdef, jax.device_get(self.state))
        info = export_info(self.config, self.step, self.last_val)
        return export(model, self.model_config, self.workdir / name, info)

    def predict(self, inputs: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        """The system's output in eval mode (alpha (B, S, S, 1), trimap logits (B, S, S, 3)) for a batch holding the
        system's `inputs` (or, for image-only systems, normalised images); B a multiple of the device count."""
        batch = inputs if isinstance(inputs, dict) else {"image": inputs}
        missing = [name for name in self.system.inputs if name not in batch]
        if missing:
            raise KeyError(f"{self.system.name} predicts from {self.system.inputs}; the batch lacks {missing}")
        sharded = shard_batch({name: batch[name] for name in self.system.inputs}, self.mesh)
        arrays = tuple(sharded[name] for name in self.system.inputs)
        return np.asarray(train_state.predict_step(self.eval_graphdef, self.state.params, self.state.rest, *arrays))

    def validate(self, log: RunLog | None = None) -> dict[str, float]:
        """The system's validation suite at the original resolution; exports ``best/`` on improvement."""
        t = self.config.train
        dataset = make_dataset(
            self.val_source, self.policy, train=False, batch_size=self.val_batch_size, fields=self.fields
        )
        suite = validation.make_suite(self.system.validation, self.config.data)
        kind = self.system.output
        samples = []
        for index in range(len(dataset)):
            batch = dataset[index]
            output = self.predict(batch)
            for j in np.flatnonzero(batch["valid"]):
                record = self.val_source[int(batch["index"][j])]
                prediction = outputs.finish(kind, output[j], batch["placement"][j], self.policy)
                suite.add(prediction, record)
                if len(samples) < int(t.sample_count):
                    samples.append((record["image"], record["mask"], outputs.preview(kind, prediction)))
        metrics = suite.summary()
        self.last_val = metrics
        if log is not None:
            log.validation(self.step, self.epoch, metrics)
        if samples:
            sample_grid(self.workdir / "samples" / f"step_{self.step:06d}.png", *zip(*samples, strict=True))
        if t.best_metric not in metrics:
            raise KeyError(f"train.best_metric {t.best_metric!r} is not among the validation metrics {sorted(metrics)}")
        value = metrics[t.best_metric]
        better = self.best is None or (value > self.best if t.best_mode == "max" else value < self.best)
        if better and self.step > 0:
            self.best = value
            self.export("best")
        return metrics

    def close(self) -> None:
        self.checkpoints.close()
        close = getattr(self.iterator, "close", None)
        if close is not None:
            close()


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> Trainer:
    """Train `config` in `workdir` to the end (resuming if possible); prints a summary."""
    start = time.perf_counter()
    trainer = Trainer(config, workdir)
    try:
        trainer.train()
    finally:
        trainer.close()
    summary = {
        "workdir": str(trainer.workdir),
        "steps": trainer.step,
        "best": trainer.best,
        "last_val": trainer.last_val,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary, indent=2))
    return trainer
