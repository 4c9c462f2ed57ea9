"""The training loop: config files, data, data-parallel steps, validation, checkpoints and exports.

`load_config("configs/tsr.py:demo", ["model.preset=tiny"])` reads a config; `Trainer(config, workdir).train()` runs
it. A workdir holds ``config.json``, ``checkpoints/`` (Orbax; the run resumes from the newest one), ``best/`` and
``last/`` (`save_pretrained` directories that `load_pretrained` and predict.py read), the logs of
`jaxmatte.train.logs` and ``samples/``.

A fresh run starts from `model.backbone_weights` / `model.init_from` (`jaxmatte.train.warm_start`) and, with
``teacher.mode="pretrained"``, trains its teacher first (`jaxmatte.train.teacher`).

A step is one micro-batch; an optimizer update happens every `optim.accum_steps` steps. Validation runs at the end of
every epoch (or every `train.val_every` steps) on the validation split: predictions are restored to each image's
original size, quantised to uint8 and scored against the original ground truth with the DIS metrics.
"""

from __future__ import annotations

import ast
import importlib.util
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
from flax import nnx

from jaxmatte.data import DISFolders, ImageReadError, write_synthetic_dis
from jaxmatte.data.pipeline import batches_per_epoch, make_dataset, make_iterator
from jaxmatte.data.transforms import Augment, ResizePolicy, to_uint8
from jaxmatte.metrics import dis_image_stats, summarize_dis
from jaxmatte.pretrained import is_model_dir, save_pretrained
from jaxmatte.train import state as train_state
from jaxmatte.train import teacher as teacher_lib
from jaxmatte.train.checkpoint import RunCheckpoints, export, export_info
from jaxmatte.train.logs import RunLog, append_csv, sample_grid
from jaxmatte.train.mesh import data_mesh, replicate, shard_batch
from jaxmatte.train.warm_start import warm_start

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


# ---------------------------------------------------------------------------------------------------------------------
# Configs


def resolve_config_path(path: str) -> Path:
    """`path` as given, else inside ``configs/`` (with or without ``.py``)."""
    candidates = [Path(path), CONFIG_DIR / path, CONFIG_DIR / f"{path}.py"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"config {path!r} not found (looked at {', '.join(map(str, candidates))})")


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """``path.py[:variant]`` -> the config file's ``get_config(variant)``, then ``a.b=value`` overrides."""
    path, _, variant = spec.partition(":")
    file = resolve_config_path(path)
    module_spec = importlib.util.spec_from_file_location(f"_jaxmatte_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(variant or None)
    for item in overrides:
        apply_override(config, item)
    return config


def _parse_value(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
    """Set ``a.b=value`` (a leading ``config.`` is ignored). The value is a Python literal or a bare string; it must
    fit the field's type (ints widen to floats, lists become tuples where the field is a tuple)."""
    key, sep, raw = item.partition("=")
    if not sep:
        raise ValueError(f"override {item!r} is not key=value")
    parts = key.strip().removeprefix("--").removeprefix("config.").split(".")
    parent = config
    for part in parts[:-1]:
        if part not in parent or not isinstance(parent[part], ml_collections.ConfigDict):
            raise KeyError(f"override {item!r}: no section {part!r}")
        parent = parent[part]
    name = parts[-1]
    if name not in parent:
        raise KeyError(f"override {item!r}: unknown field {name!r}; known: {sorted(parent.keys())}")
    field_type = parent.get_ref(name).get_type()
    value = raw if field_type is str else _parse_value(raw)
    if field_type is tuple and isinstance(value, list):
        value = tuple(value)
    if field_type is list and isinstance(value, tuple):
        value = list(value)
    if field_type is bool and not isinstance(value, bool):
        raise TypeError(f"override {item!r}: {name} needs True or False")
    try:
        parent[name] = value
    except TypeError as err:
        raise TypeError(f"override {item!r}: {err}") from None


def default_workdir(config: ml_collections.ConfigDict) -> Path:
    return Path("runs") / f"{config.name}-{config.variant}"


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
    def __init__(self, source: Any, count: int):
        self.source, self.count = source, min(count, len(source))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.source[index]


def data_roots(config: ml_collections.ConfigDict) -> tuple[list[str], list[str]]:
    """(train roots, val roots); with `data.synthetic_root` the synthetic set is written (or reused) first."""
    data = config.data
    if data.synthetic_root:
        low, high = data.synthetic_size
        root = write_synthetic_dis(
            data.synthetic_root,
            splits={"train": data.synthetic_train, "val": data.synthetic_val},
            size_range=((low, high), (low, high)),
            seed=config.seed,
        )
        return [str(root / "train")], [str(root / "val")]
    return list(data.train_roots), list(data.val_roots)


# ---------------------------------------------------------------------------------------------------------------------
# Trainer


class Trainer:
    """One training run in `workdir`; construction resumes from the newest checkpoint there, if any."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | Path, *, devices: list[Any] | None = None):
        self.config = config
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
        self.mesh = data_mesh(devices)
        num_devices = self.mesh.devices.size
        self.batch_size = int(config.optim.batch_size)
        if self.batch_size % num_devices:
            raise ValueError(f"optim.batch_size {self.batch_size} does not split over {num_devices} devices")
        self.val_batch_size = math.ceil(int(config.data.val_batch_size) / num_devices) * num_devices

        train_roots, val_roots = data_roots(config)
        self.train_roots = train_roots
        self.policy = ResizePolicy(config.data.policy, int(config.data.size))
        self.train_source = SkippingSource(DISFolders(train_roots))
        self.val_source: Any = DISFolders(val_roots)
        if config.data.val_limit > 0:
            self.val_source = Subset(self.val_source, int(config.data.val_limit))
        self.steps_per_epoch = batches_per_epoch(len(self.train_source), self.batch_size, train=True)
        self.total_steps = int(config.train.steps) or int(config.optim.epochs) * self.steps_per_epoch
        augment = Augment() if config.data.augment else None
        dataset = make_dataset(
            self.train_source, self.policy, train=True, batch_size=self.batch_size, seed=config.seed, augment=augment
        )
        self.iterator = make_iterator(dataset, workers=int(config.data.workers))

        self.model_config = train_state.model_config(config)
        model = train_state.build_model(config, self.model_config)
        self.checkpoints = RunCheckpoints(self.workdir, max_to_keep=int(config.train.max_to_keep))
        if self.checkpoints.latest_step() is None:
            warm_start(model, config, customised_backbone=train_state.customised_backbone(config))
            if config.teacher.mode == "pretrained":
                self.prepare_teacher(model)
        self.tx = train_state.make_optimizer(config.optim, self.steps_per_epoch)
        self.spec = train_state.LossSpec.from_config(config)
        self.graphdef, state = train_state.init_state(model, self.tx)
        self.eval_graphdef = train_state.eval_graphdef(self.graphdef, state)
        self.state = replicate(state, self.mesh)
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

    def prepare_teacher(self, model: Any) -> None:
        """Fill `model.teacher` of a fresh `pretrained` run: from `teacher.path`, from ``teacher/`` in the workdir (an
        earlier attempt of this run), or trained now on the training masks and saved there."""
        expected = self.model_config.teacher
        saved = self.workdir / teacher_lib.TEACHER_DIR
        path = self.config.teacher.path
        source = Path(path) if path else saved if is_model_dir(saved) else None
        if source is not None:
            trained = teacher_lib.load(source, expected)
            logger.info("teacher loaded from %s", source)
        else:
            trained = model.teacher
            self.train_teacher(trained, model.student.safe_size, saved)
        nnx.update(model.teacher, nnx.state(trained))

    def train_teacher(self, teacher: Any, safe_size: int, directory: Path) -> None:
        """`teacher_lib.pretrain` on this run's training masks; logs to ``teacher.csv``, saves to `directory`."""
        config, t = self.config, self.config.teacher
        devices = self.mesh.devices.size
        if int(t.batch_size) % devices:
            raise ValueError(f"teacher.batch_size {t.batch_size} does not split over {devices} devices")
        augment = Augment() if config.data.augment else None
        dataset = make_dataset(
            self.train_source,
            self.policy,
            train=True,
            batch_size=int(t.batch_size),
            seed=config.seed + 1,
            augment=augment,
        )
        val = make_dataset(self.val_source, self.policy, train=False, batch_size=self.val_batch_size)
        recipe = teacher_lib.TeacherRecipe(
            int(t.steps), float(t.lr), float(t.weight_decay), int(t.seed) + 1, int(config.train.log_every)
        )
        csv_path = self.workdir / "teacher.csv"
        csv_path.unlink(missing_ok=True)

        def log(step: int, terms: dict[str, float]) -> None:
            append_csv(csv_path, {"step": step, **terms})
            logger.info("teacher step %d/%d: loss %.4f, IoU %.4f", step, recipe.steps, terms["total"], terms["iou"])

        batches = make_iterator(dataset, workers=int(config.data.workers))
        try:
            val_terms = teacher_lib.pretrain(
                teacher,
                self.model_config.teacher,
                safe_size,
                batches,
                (val[i] for i in range(len(val))),
                recipe,
                self.mesh,
                log=log,
            )
        finally:
            getattr(batches, "close", lambda: None)()
        logger.info("teacher validation: %s", " ".join(f"{k} {v:.4f}" for k, v in val_terms.items()))
        info = {"steps": recipe.steps, "seed": recipe.seed, "val": val_terms, "train_roots": self.train_roots}
        save_pretrained(teacher, self.model_config.teacher, directory, info=info)

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def params(self) -> dict[str, np.ndarray]:
        """Dotted path -> numpy value of every parameter and model-state array (trainable and not)."""
        from flax import nnx

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
        config = self.config
        until = self.total_steps if until is None else min(until, self.total_steps)
        log = RunLog(
            self.workdir, total_steps=self.total_steps, start_step=self.step, progress=bool(config.train.progress)
        )
        ran: dict[int, dict[str, float]] = {}
        pending: list[tuple[int, Any]] = []
        try:
            if self.step == 0 and config.train.val_at_start and not (self.workdir / "val.csv").exists():
                self.validate(log)
            while self.step < until:
                batch = shard_batch(next(self.iterator), self.mesh)
                self.state, terms = train_state.train_step(self.graphdef, self.tx, self.spec, self.state, batch)
                self.step += 1
                pending.append((self.step, terms))
                log.advance()
                epoch_end = self.step % self.steps_per_epoch == 0
                if epoch_end and config.optim.drop_partial_accumulation:
                    self.state = self.state._replace(opt=train_state.drop_partial_accumulation(self.state.opt))
                if self.step % int(config.train.log_every) == 0 or self.step == until or epoch_end:
                    for step, values in jax.device_get(pending):
                        ran[step] = {key: float(value) for key, value in values.items()}
                        if not all(math.isfinite(v) for v in ran[step].values()):
                            log.message(f"step {step}: non-finite loss terms {ran[step]}")
                    lr = train_state.learning_rate(config.optim, self.steps_per_epoch, self.step - 1)
                    log.train(self.step, self.epoch, lr, self.batch_size, ran[self.step])
                    pending.clear()
                val_every = int(config.train.val_every)
                if (
                    (val_every and self.step % val_every == 0)
                    or (not val_every and epoch_end)
                    or (self.step == self.total_steps)
                ):
                    self.validate(log)
                save_every = int(config.train.checkpoint_every)
                if (
                    (save_every and self.step % save_every == 0)
                    or (not save_every and epoch_end)
                    or (self.step == until)
                ):
                    self.save()
            if self.step >= self.total_steps:
                self.export("last")
                log.message(f"done: {self.step} steps; exported {self.workdir / 'last'}")
            log.plot(config.train.best_metric)
        finally:
            log.close()
        self.history.update(ran)
        return ran

    def save(self) -> None:
        record = {"step": self.step, "best": self.best, "last_val": self.last_val, "time": time.time()}
        self.checkpoints.save(self.step, self.state, self.iterator, record)

    def export(self, name: str) -> Path:
        model = train_state.merged_model(self.graphdef, jax.device_get(self.state))
        info = export_info(self.config, self.step, self.last_val)
        return export(model, self.model_config, self.workdir / name, info)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Alpha (B, S, S, 1) of the model in eval mode for normalised images (B a multiple of the device count)."""
        images = shard_batch({"image": images}, self.mesh)["image"]
        return np.asarray(train_state.predict_step(self.eval_graphdef, self.state.params, self.state.rest, images))

    def validate(self, log: RunLog | None = None) -> dict[str, float]:
        """DIS metrics on the validation split at the original resolution; exports ``best/`` on improvement."""
        config = self.config
        dataset = make_dataset(self.val_source, self.policy, train=False, batch_size=self.val_batch_size)
        stats, samples = [], []
        for index in range(len(dataset)):
            batch = dataset[index]
            alpha = self.predict(batch["image"])
            for j in np.flatnonzero(batch["valid"]):
                record = self.val_source[int(batch["index"][j])]
                prediction = to_uint8(self.policy.restore(alpha[j], batch["placement"][j]))
                stats.append(dis_image_stats(prediction, record["mask"]))
                if len(samples) < int(config.train.sample_count):
                    samples.append((record["image"], record["mask"], prediction))
        metrics = summarize_dis(stats)
        self.last_val = metrics
        if log is not None:
            log.validation(self.step, self.epoch, metrics)
        if samples:
            sample_grid(self.workdir / "samples" / f"step_{self.step:06d}.png", *zip(*samples, strict=True))
        value = metrics[config.train.best_metric]
        better = self.best is None or (value > self.best if config.train.best_mode == "max" else value < self.best)
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
