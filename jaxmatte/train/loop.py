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

Reliability:

- Non-finite steps (loss, gradient norm or the resulting state not finite) change nothing when
  `optim.skip_nonfinite` is on (the default; `train_state.train_step`); they are counted (``skipped`` in
  ``train.csv``, ``train/skipped`` in TensorBoard, the progress bar) and reported once per streak. After
  `train.max_nonfinite_steps` in a row (0: never) the run stops with `NonFiniteError`, checked at each logging
  point. Checkpoints and exports are never written from a non-finite state.
- Resuming checks the workdir's ``config.json`` first: another model (or a train state of another shape, e.g. a
  changed ``optim.accum_steps``) fails with `ResumeError` naming the fields and leaves the workdir alone; other
  changes (lr, epochs, ...) are logged as a warning and take effect. Logs are cut back to the restored step.
- SIGTERM / SIGINT make the loop save a checkpoint after the current step and raise `Interrupted` (a second SIGINT
  interrupts at once). Exports are atomic (`jaxmatte.train.checkpoint.export`).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxmatte import outputs, pretrained, registry, validation
from jaxmatte.data import ImageReadError, open_folders, write_synthetic_dis, write_synthetic_matting
from jaxmatte.data.composition import write_synthetic_composition
from jaxmatte.data.pipeline import batches_per_epoch, make_dataset, make_iterator
from jaxmatte.data.transforms import Augment, ResizePolicy
from jaxmatte.train import state as train_state
from jaxmatte.train.checkpoint import RunCheckpoints, export, export_info, recover_export
from jaxmatte.train.config import (
    apply_override,
    changed_settings,
    config_settings,
    default_workdir,
    flat_settings,
    load_config,
    merge_overrides,
    model_differences,
    resolve_config_path,
)
from jaxmatte.train.logs import RunLog, sample_grid, truncate_logs
from jaxmatte.train.mesh import data_mesh, replicate, shard_batch
from jaxmatte.train.warm_start import warm_start

logger = logging.getLogger(__name__)

__all__ = [
    "Interrupted",
    "NonFiniteError",
    "ResumeError",
    "Trainer",
    "TrainingError",
    "apply_override",
    "default_workdir",
    "due",
    "load_config",
    "resolve_config_path",
    "run",
]


class TrainingError(RuntimeError):
    """A run that cannot go on; the message (one line) says why and what to do."""


class NonFiniteError(TrainingError):
    """Too many non-finite steps in a row, or a non-finite state about to be exported."""


class ResumeError(TrainingError):
    """A workdir's checkpoints do not fit the config (another model or train state)."""


class Interrupted(Exception):
    """Training stopped by SIGTERM / SIGINT after saving a checkpoint at `step`."""

    def __init__(self, signum: int, step: int, workdir: Path):
        self.signum, self.step = signum, step
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step}; checkpoint saved in {workdir}; rerun to resume")


class StopSignals:
    """Within `with`: the first SIGTERM / SIGINT only sets `signum` (the loop saves and stops); a second SIGINT
    raises KeyboardInterrupt at once. Handlers are installed in the main thread only."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def due(step: int, every: int, *, epoch_end: bool) -> bool:
    """Whether a periodic action (validation, checkpoint) is due after `step`: every `every` steps, or at each epoch
    end when `every` is 0."""
    return step % every == 0 if every else epoch_end


# ---------------------------------------------------------------------------------------------------------------------
# Data


class SkippingSource:
    """A source whose unreadable records (or records whose image and mask differ in size) are reported once (logged
    with the file) and replaced by the next readable one."""

    def __init__(self, source: Any):
        self.source = source
        self.skipped: set[int] = set()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        for offset in range(len(self.source)):
            candidate = (index + offset) % len(self.source)
            try:
                return _checked(self.source[candidate])
            except (ImageReadError, OSError) as err:
                if candidate not in self.skipped:
                    self.skipped.add(candidate)
                    logger.warning("skipping unreadable training record %d: %s", candidate, err)
        raise RuntimeError("no record of the training set can be read")


def _checked(record: dict[str, Any]) -> dict[str, Any]:
    """`record`, unless its image and mask (when it has both) differ in size."""
    image, mask = record.get("image"), record.get("mask")
    if isinstance(image, np.ndarray) and isinstance(mask, np.ndarray) and image.shape[:2] != mask.shape[:2]:
        name = record.get("name", "?")
        raise ImageReadError(
            name, f"image is {image.shape[1]}x{image.shape[0]} but its mask {mask.shape[1]}x{mask.shape[0]}"
        )
    return record


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
        self.checkpoints = RunCheckpoints(self.workdir, max_to_keep=int(config.train.max_to_keep))
        changes = self._check_resume(config) if self.checkpoints.latest_step() is not None else []
        for name in ("best", "last"):
            recover_export(self.workdir / name)
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
        if self.steps_per_epoch == 0:
            raise TrainingError(
                f"the training set ({', '.join(self.train_roots)}) has {len(self.train_source)} usable record(s), "
                f"fewer than optim.batch_size {self.batch_size} (left-out files are listed above)"
            )
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
        self.iterator = make_iterator(dataset, workers=int(data.workers), prefetch=int(data.get("prefetch", 4)))

        self.model_config = train_state.model_config(config)
        model = train_state.build_model(config, self.model_config)
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
        self.skip_nonfinite = bool(config.optim.skip_nonfinite)
        self.skipped = 0  # non-finite steps of the run (resumed runs included)
        self.streak = 0  # of them, the latest in a row

        if not fresh:
            self._restore(changes)
        truncate_logs(self.workdir, self.step)
        tmp = self.workdir / ".config.json.tmp"
        tmp.write_text(config.to_json_best_effort(indent=2) + "\n")
        tmp.replace(self.workdir / "config.json")

    def _check_resume(self, config: ml_collections.ConfigDict) -> list[str]:
        """The settings changed since the workdir's ``config.json``; `ResumeError` when the model changed."""
        path = self.workdir / "config.json"
        try:
            previous = flat_settings(json.loads(path.read_text()))
        except (OSError, ValueError):
            return []
        differences = model_differences(config, previous)
        if differences:
            raise ResumeError(
                f"cannot resume {self.workdir}: its checkpoints hold another model ({'; '.join(differences)}); "
                "use the settings of its config.json or another --workdir"
            )
        return changed_settings(previous, config_settings(config))

    def _restore(self, changes: list[str]) -> None:
        step = self.checkpoints.latest_step()
        mismatch = self.checkpoints.mismatch(step, self.state)
        changed = f"; changed settings: {'; '.join(changes)}" if changes else ""
        if mismatch:
            shown = "; ".join(mismatch[:3]) + (f"; ... {len(mismatch) - 3} more" if len(mismatch) > 3 else "")
            raise ResumeError(
                f"cannot resume {self.workdir}: the train state of its checkpoint (step {step}) has another shape "
                f"({shown}){changed}; use the settings of its config.json or another --workdir"
            )
        try:
            self.step, self.state, record = self.checkpoints.restore_latest(self.state, self.iterator)
        except Exception as err:  # noqa: BLE001 - tensorstore, Orbax metadata and grain failures alike
            earlier = [s for s in self.checkpoints.all_steps() if s < step]
            advice = (
                f"; to resume from step {earlier[-1]} instead, remove {self.checkpoints.directory / str(step)}"
                if earlier
                else ""
            )
            raise ResumeError(
                f"cannot resume {self.workdir}: its checkpoint of step {step} cannot be read "
                f"({pretrained.orbax_problem(err)}){changed}{advice}"
            ) from err
        self.best = record.get("best")
        self.last_val = record.get("last_val", {})
        self.skipped = int(record.get("skipped", 0))
        self.streak = 0 if changes else int(record.get("nonfinite_streak", 0))  # new settings: a fresh count
        logger.info("resumed %s at step %d", self.workdir, self.step)
        if changes:
            logger.warning(
                "resuming %s with changed settings, which apply from step %d on (learning-rate schedule included): %s",
                self.workdir,
                self.step,
                "; ".join(changes),
            )

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
        """Train up to micro-batch `until` (default: the end); returns the loss terms of the steps run now.

        Raises `NonFiniteError` after `train.max_nonfinite_steps` non-finite steps in a row and `Interrupted` after
        SIGTERM / SIGINT (a checkpoint saved first)."""
        config, t = self.config, self.config.train
        self.prepare()
        until = self.total_steps if until is None else min(until, self.total_steps)
        log = RunLog(self.workdir, total_steps=self.total_steps, start_step=self.step, progress=bool(t.progress))
        ran: dict[int, dict[str, float]] = {}
        pending: list[tuple[int, Any]] = []
        try:
            with StopSignals() as stop:
                if self.step == 0 and t.val_at_start and not (self.workdir / "val.csv").exists():
                    self.validate(log)
                while self.step < until:
                    batch = shard_batch(next(self.iterator), self.mesh)
                    self.state, terms = train_state.train_step(
                        self.graphdef, self.tx, self.loss, self.state, batch, skip_nonfinite=self.skip_nonfinite
                    )
                    self.step += 1
                    pending.append((self.step, terms))
                    log.advance()
                    epoch_end = self.step % self.steps_per_epoch == 0
                    if epoch_end and config.optim.drop_partial_accumulation:
                        self.state = self.state._replace(opt=train_state.drop_partial_accumulation(self.state.opt))
                    log_now = due(self.step, int(t.log_every), epoch_end=True) or epoch_end or self.step == until
                    val_now = due(self.step, int(t.val_every), epoch_end=epoch_end) or self.step == self.total_steps
                    save_now = due(self.step, int(t.checkpoint_every), epoch_end=epoch_end) or self.step == until
                    if log_now or val_now or save_now or stop.signum:
                        self._collect(log, pending, ran)
                    if log_now:
                        self._log_train(log, ran[self.step])
                    if val_now:
                        self.validate(log)
                    if save_now or stop.signum:
                        log.flush()
                        self.save()
                    if stop.signum:
                        interrupted = Interrupted(stop.signum, self.step, self.workdir)
                        log.message(str(interrupted))
                        raise interrupted
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

    def _collect(self, log: RunLog, pending: list[tuple[int, Any]], ran: dict[int, dict[str, float]]) -> None:
        """Fetch the terms of the steps run since the last call, count non-finite ones; `NonFiniteError` at
        `train.max_nonfinite_steps` in a row."""
        limit = int(self.config.train.get("max_nonfinite_steps", 0))
        fetched = jax.device_get(pending)
        pending.clear()
        for step, values in fetched:
            terms = ran[step] = {key: float(value) for key, value in values.items()}
            if terms.get("nonfinite", 0.0) == 0.0:
                if self.streak:
                    log.message(f"step {step}: finite again after {self.streak} non-finite step(s)")
                self.streak = 0
                continue
            self.skipped += 1
            self.streak += 1
            if self.streak == 1:
                action = "skipped" if self.skip_nonfinite else "applied anyway (optim.skip_nonfinite=False)"
                log.message(f"step {step}: non-finite {_described(terms)}; update {action}")
            if limit and self.streak >= limit:
                self._log_train(log, terms, step)
                latest = self.checkpoints.latest_step()
                kept = f"newest checkpoint: step {latest}" if latest is not None else "no checkpoint yet"
                state = "the state kept its last finite values" if self.skip_nonfinite else "the state is not finite"
                raise NonFiniteError(
                    f"stopped at step {step}: {self.streak} non-finite steps in a row ({_described(terms)}); "
                    f"{state} ({kept}); lower optim.lr or check the data "
                    "(train.max_nonfinite_steps sets the limit, 0 = never stop)"
                )

    def _log_train(self, log: RunLog, terms: dict[str, float], step: int | None = None) -> None:
        step = self.step if step is None else step
        lr = train_state.learning_rate(self.config.optim, self.steps_per_epoch, step - 1)
        log.train(step, step // self.steps_per_epoch, lr, self.batch_size, terms, skipped=self.skipped)

    def finite(self) -> bool:
        """Whether every floating-point value of the train state is finite."""
        return bool(train_state.all_finite(self.state))

    def save(self) -> None:
        if not self.finite():
            logger.warning(
                "not saving a checkpoint at step %d: the train state is not finite (newest checkpoint: step %s)",
                self.step,
                self.checkpoints.latest_step(),
            )
            return
        record = {
            "step": self.step,
            "best": self.best,
            "last_val": self.last_val,
            "time": time.time(),
            "skipped": self.skipped,
            "nonfinite_streak": self.streak,
        }
        self.checkpoints.save(self.step, self.state, self.iterator, record)

    def export(self, name: str) -> Path:
        if not self.finite():
            raise NonFiniteError(
                f"refusing to export {self.workdir / name}: the train state at step {self.step} is not finite"
            )
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
        if not self.finite():
            message = f"step {self.step}: validation skipped, the train state is not finite"
            if log is not None:
                log.message(message)
            else:
                logger.warning(message)
            return {}
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


def _described(terms: dict[str, float]) -> str:
    return f"loss {terms.get('total', math.nan):.4g}, gradient norm {terms.get('grad_norm', math.nan):.4g}"


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
