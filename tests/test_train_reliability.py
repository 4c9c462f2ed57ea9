"""Training reliability: non-finite steps skipped whole, counted and stopping the run; resume checks and log
truncation; SIGKILL at many points (checkpoint writes and exports included), SIGTERM / SIGINT, each resumed to the
uninterrupted result; bad training files."""

import contextlib
import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image
from test_train import nnx_values, read_events, tiny_config

from jaxmatte.data import write_synthetic_dis
from jaxmatte.data.io import ImageReadError, read_mask
from jaxmatte.train import apply_override, state
from jaxmatte.train import loop as loop_module
from jaxmatte.train.checkpoint import recover_export
from jaxmatte.train.loop import ResumeError, SkippingSource, Trainer, TrainingError
from jaxmatte.train.mesh import shard_batch

ROOT = Path(__file__).resolve().parents[1]
# One config for every run here (one compilation): student + refiner (BatchNorm, drop-path RNG streams), updates of
# 2 micro-batches, 2 steps an epoch; only the number of steps and other settings outside the jitted step vary.
CONFIG = {
    "teacher.mode": "off",
    "train.log_every": 1,
    "optim.accum_steps": 2,
    "train.steps": 8,
    "train.checkpoint_every": 2,
    "train.val_every": 4,
}


def leaves(tree):
    return [
        np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
        for x in jax.tree.leaves(tree)
    ]


def assert_trees_equal(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def rows(path):
    with Path(path).open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synthetic"
    write_synthetic_dis(root, splits={"train": 8, "val": 4}, size_range=((64, 96), (64, 96)), seed=1)
    return str(root)


# ---------------------------------------------------------------------------------------------------------------------
# Non-finite steps


def train_step(trainer, batch):
    """One micro-batch on `trainer`'s state, as its loop runs it."""
    args = (trainer.graphdef, trainer.tx, trainer.loss, trainer.state, shard_batch(batch, trainer.mesh))
    trainer.state, terms = state.train_step(*args, skip_nonfinite=True)
    return {key: float(value) for key, value in terms.items()}


def test_nonfinite_micro_batch_changes_no_state_and_accumulation_goes_on(data_root, tmp_path):
    config = tiny_config(data_root, **CONFIG)
    reference, skipping = Trainer(config, tmp_path / "reference"), Trainer(config, tmp_path / "skipping")
    first, second = next(reference.iterator), next(reference.iterator)
    poisoned = {**first, "image": np.array(first["image"])}
    poisoned["image"].flat[9] = np.nan
    for batch in (first, second):
        assert train_step(reference, batch)["nonfinite"] == 0.0
    train_step(skipping, first)
    after_first = leaves(skipping.state)
    terms = train_step(skipping, poisoned)
    assert terms["nonfinite"] == 1.0 and not np.isfinite(terms["total"])
    # nothing moved: parameters, BatchNorm statistics, RNG streams, MultiSteps' partial accumulation
    assert_trees_equal(leaves(skipping.state), after_first)
    assert int(skipping.state.opt.mini_step) == 1
    train_step(skipping, second)  # completes the accumulation the poisoned micro-batch left open
    assert_trees_equal(leaves(skipping.state), leaves(reference.state))
    names = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(skipping.state.rest)]
    assert any("mean" in name for name in names) and any("rngs" in name for name in names)
    reference.close()
    skipping.close()


@pytest.fixture(scope="module")
def nan_run(data_root, tmp_path_factory):
    """6 steps with the image of batch 3 poisoned; checkpoints every 2 steps, validation at 4 and 6."""
    config = tiny_config(data_root, **{**CONFIG, "train.steps": 6})
    workdir = tmp_path_factory.mktemp("nan_run")
    original = loop_module.shard_batch
    calls = []

    def poisoning(batch, mesh):
        calls.append(1)
        if len(calls) == 3:
            image = np.array(batch["image"])
            image.flat[9] = np.nan
            batch = {**batch, "image": image}
        return original(batch, mesh)

    loop_module.shard_batch = poisoning
    try:
        trainer = Trainer(config, workdir)
        losses = trainer.train()
        trainer.close()
    finally:
        loop_module.shard_batch = original
    return {"config": config, "workdir": workdir, "losses": losses, "trainer": trainer}


def test_injected_nan_batch_is_skipped_counted_and_logged(nan_run):
    losses, workdir, trainer = nan_run["losses"], nan_run["workdir"], nan_run["trainer"]
    assert [losses[step]["nonfinite"] for step in range(1, 7)] == [0, 0, 1, 0, 0, 0]
    assert not np.isfinite(losses[3]["total"]) and all(np.isfinite(losses[s]["total"]) for s in (1, 2, 4, 5, 6))
    assert trainer.skipped == 1 and trainer.streak == 0 and trainer.finite()
    assert [int(row["skipped"]) for row in rows(workdir / "train.csv")] == [0, 0, 1, 1, 1, 1]
    board = {(tag, step): value for tag, step, value in read_events(workdir / "tensorboard")}
    assert [board["train/skipped", step] for step in range(1, 7)] == [0, 0, 1, 1, 1, 1]
    assert ("train/total", 3) not in board and ("train/total", 4) in board
    for name, value in nnx_values(workdir / "last").items():
        assert np.all(np.isfinite(value)), name
    record = json.loads((workdir / "checkpoints" / "6" / "record" / "metadata").read_text())
    assert record["skipped"] == 1


def test_absurd_learning_rate_stops_with_one_line_and_exports_nothing(data_root, tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(ROOT))
    import train

    def tiny(spec, overrides):
        changes = {"train.steps": 10, "train.max_nonfinite_steps": 3, "train.val_every": 1000}
        config = tiny_config(data_root, **{**CONFIG, **changes})
        for item in overrides:
            apply_override(config, item)
        return config

    monkeypatch.setattr(loop_module, "load_config", tiny)
    workdir = tmp_path / "run"
    code = train.main(["--config", "tsr.py:demo", "--workdir", str(workdir), "--config.optim.lr=1e9"])
    err = capsys.readouterr().err
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "non-finite steps in a row" in errors[0] and "optim.lr" in errors[0], err
    assert "Traceback" not in err
    assert not (workdir / "best").exists() and not (workdir / "last").exists()
    skipped = [int(row["skipped"]) for row in rows(workdir / "train.csv")]
    assert skipped[-1] == 3 and skipped == sorted(skipped)
    newest = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    with ocp.StandardCheckpointer() as checkpointer:  # the newest checkpoint holds the last finite state
        stored = checkpointer.restore(workdir / "checkpoints" / str(newest) / "state")
    assert newest in (2, 4) and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(stored) if x.dtype.kind == "f")


# ---------------------------------------------------------------------------------------------------------------------
# Resume hygiene


def test_resume_checks_the_model_warns_about_other_changes_and_truncates_logs(data_root, nan_run, tmp_path, caplog):
    workdir = tmp_path / "copy"
    shutil.copytree(nan_run["workdir"], workdir)
    saved = (workdir / "config.json").read_bytes()
    changes = {**CONFIG, "train.steps": 6}

    with pytest.raises(ResumeError, match=r"model\.backbone\.embed_dim 8 -> 16") as info:
        Trainer(tiny_config(data_root, **changes, **{"model.backbone.embed_dim": 16}), workdir)
    assert "\n" not in str(info.value)
    assert (workdir / "config.json").read_bytes() == saved  # compared before anything is written
    with pytest.raises(ResumeError, match=r"optim\.accum_steps 2 -> 1"):  # same model, optimizer state of another shape
        Trainer(tiny_config(data_root, **{**changes, "optim.accum_steps": 1}), workdir)
    assert (workdir / "config.json").read_bytes() == saved

    # the run stopped after its step-4 checkpoint: step 6's is gone
    shutil.rmtree(workdir / "checkpoints" / "6")
    assert max(int(row["step"]) for row in rows(workdir / "train.csv")) == 6
    caplog.set_level(logging.WARNING)
    trainer = Trainer(tiny_config(data_root, **changes, **{"optim.lr": 3e-4, "optim.epochs": 4}), workdir)
    trainer.close()
    assert trainer.step == 4 and trainer.skipped == 1
    warned = [r.getMessage() for r in caplog.records if "changed settings" in r.getMessage()]
    assert len(warned) == 1 and "optim.lr 0.0001 -> 0.0003" in warned[0] and "optim.epochs 2 -> 4" in warned[0]
    assert json.loads((workdir / "config.json").read_text())["optim"]["lr"] == 3e-4
    assert [int(row["step"]) for row in rows(workdir / "train.csv")] == [1, 2, 3, 4]
    assert [int(row["step"]) for row in rows(workdir / "val.csv")] == [4]
    assert max(step for _, step, _ in read_events(workdir / "tensorboard")) == 4


def test_damaged_resume_checkpoint_is_one_line_naming_the_way_out(data_root, nan_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(nan_run["workdir"], workdir)
    saved = (workdir / "config.json").read_bytes()
    for file in (workdir / "checkpoints" / "6" / "state").rglob("*"):
        if file.is_file() and file.parent.name == "d":
            file.write_bytes(file.read_bytes()[:64])
    config = tiny_config(data_root, **{**CONFIG, "train.steps": 6})
    with pytest.raises(ResumeError) as info:
        Trainer(config, workdir)
    text = str(info.value)
    assert "\n" not in text and "checkpoint of step 6 cannot be read" in text, text
    assert text.endswith(f"to resume from step 4 instead, remove {workdir.absolute() / 'checkpoints' / '6'}"), text
    assert "tensorstore_spec" not in text and "bound method" not in text, text
    assert (workdir / "config.json").read_bytes() == saved
    shutil.rmtree(workdir / "checkpoints" / "6")
    trainer = Trainer(config, workdir)
    trainer.close()
    assert trainer.step == 4


def test_recover_export_after_a_cut_swap(tmp_path):
    (tmp_path / ".best.old").mkdir()
    (tmp_path / ".best.old" / "config.json").write_text("{}")
    (tmp_path / ".best.tmp").mkdir()  # the new export, complete or not
    recover_export(tmp_path / "best")
    assert (tmp_path / "best" / "config.json").is_file()
    assert not (tmp_path / ".best.old").exists() and not (tmp_path / ".best.tmp").exists()
    (tmp_path / ".last.tmp").mkdir()  # killed while writing the first export
    recover_export(tmp_path / "last")
    assert not (tmp_path / "last").exists() and not (tmp_path / ".last.tmp").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Bad training data


def test_bad_training_files_are_reported_once_and_skipped_or_converted(data_root, tmp_path, caplog):
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    im, gt = root / "train" / "im", root / "train" / "gt"
    stems = sorted(p.stem for p in im.glob("*.jpg"))
    mask = np.asarray(Image.open(gt / f"{stems[0]}.png").convert("L"))
    (im / "zz_garbage.jpg").write_bytes(b"not an image")  # unreadable: left out at start-up
    shutil.copy(gt / f"{stems[0]}.png", gt / "zz_garbage.png")
    shutil.copy(im / f"{stems[1]}.jpg", im / "zz_size.jpg")  # ground truth of another size: left out
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(gt / "zz_size.png")
    shutil.copy(im / f"{stems[2]}.jpg", im / "zz_nogt.jpg")  # no ground truth: left out
    shutil.copy(im / f"{stems[0]}.jpg", im / "zz_deep.jpg")  # 16-bit ground truth: scaled to 8 bits
    Image.fromarray(mask.astype(np.uint16) * 257).save(gt / "zz_deep.png")
    shutil.copy(im / f"{stems[0]}.jpg", im / "zz_rgba.jpg")  # white cut-out: its alpha is the mask
    rgba = np.dstack([np.full(mask.shape + (3,), 255, np.uint8), mask])
    Image.fromarray(rgba, "RGBA").save(gt / "zz_rgba.png")
    shutil.copy(im / f"{stems[0]}.jpg", im / "zz_trunc.jpg")  # pixel data cut: skipped when first read
    Image.fromarray(mask).save(gt / "zz_trunc.jpg", quality=95)
    data = (gt / "zz_trunc.jpg").read_bytes()
    (gt / "zz_trunc.jpg").write_bytes(data[: len(data) // 3])

    caplog.set_level(logging.INFO)
    trainer = Trainer(tiny_config(str(root), **{**CONFIG, "train.steps": 2}), tmp_path / "run")
    folders = trainer.train_source.source
    problems = {path.name: reason for path, reason in folders.problems}
    assert set(problems) == {"zz_garbage.jpg", "zz_size.jpg", "zz_nogt.jpg"}, problems
    assert "12x10" in problems["zz_size.jpg"] and "without ground truth" in problems["zz_nogt.jpg"]
    assert {path.name for path, _ in folders.notes} == {"zz_deep.png", "zz_rgba.png"}
    for name in ("zz_garbage.jpg", "zz_size.jpg", "zz_nogt.jpg", "zz_deep.png", "zz_rgba.png"):
        assert sum(name in r.getMessage() for r in caplog.records) == 1, name
    names = folders.names
    for stem in ("zz_deep", "zz_rgba"):
        np.testing.assert_array_equal(folders[names.index(stem)]["mask"], mask, err_msg=stem)
    losses = trainer.train()
    trainer.close()
    assert sorted(losses) == [1, 2] and all(np.isfinite(t["total"]) for t in losses.values())
    for _ in range(2):
        trainer.train_source[names.index("zz_trunc")]  # replaced by the next record, reported once
    assert sum("zz_trunc.jpg" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ImageReadError):
        read_mask(gt / "zz_trunc.jpg")


def test_skipping_source_catches_size_mismatch_and_empty_sets(data_root, tmp_path, caplog):
    good = {"image": np.zeros((4, 5, 3), np.uint8), "mask": np.zeros((4, 5), np.uint8), "name": "good"}
    bad = {"image": np.zeros((4, 5, 3), np.uint8), "mask": np.zeros((5, 4), np.uint8), "name": "rotated"}
    source = SkippingSource([bad, good])
    caplog.set_level(logging.WARNING)
    assert source[0]["name"] == "good" and source[0]["name"] == "good"
    assert sum("rotated" in r.getMessage() for r in caplog.records) == 1
    root = tmp_path / "few"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        for folder in ("im", "gt"):
            shutil.copytree(Path(data_root) / split / folder, root / split / folder)
    for path in sorted((root / "train" / "im").iterdir())[2:]:
        path.unlink()
    with pytest.raises(TrainingError, match="2 usable record"):
        Trainer(tiny_config(str(root), **CONFIG), tmp_path / "run")


# ---------------------------------------------------------------------------------------------------------------------
# Crash safety

DRIVER = """
import os, signal, sys
import jax
jax.config.update("jax_default_matmul_precision", "highest")
sys.path.insert(0, {tests!r})
import orbax.checkpoint as ocp
from orbax.checkpoint._src.path import atomicity
from test_train import tiny_config
from jaxmatte.train import checkpoint, loop, state
from jaxmatte.train.loop import Interrupted, Trainer

kind, _, at = os.environ.get("CRASH_AT", "").partition(":")
at = int(at or 0)
config = tiny_config({data!r}, **{changes!r})
trainer = Trainer(config, sys.argv[1])

def die():
    os.kill(os.getpid(), signal.SIGKILL)

step_fn = state.train_step
def train_step(*args, **kwargs):
    out = step_fn(*args, **kwargs)
    step = trainer.step + 1
    if step == at and kind in ("step", "sigterm", "sigint"):
        jax.block_until_ready(out)
        if kind == "step":
            die()
        os.kill(os.getpid(), signal.SIGTERM if kind == "sigterm" else signal.SIGINT)
    return out
state.train_step = train_step

json_save = ocp.JsonCheckpointHandler.async_save
async def record_save(self, directory, *args, **kwargs):
    if kind == "write" and trainer.step == at:
        die()  # the state is written, the record not: a half-written checkpoint
    return await json_save(self, directory, *args, **kwargs)
ocp.JsonCheckpointHandler.async_save = record_save

finalize = atomicity.AtomicRenameTemporaryPath.finalize
async def final_rename(self):
    if kind == "finalize" and self.get_final().name == str(at) and self.get_final().parent.name == "checkpoints":
        die()  # everything written, not yet renamed
    return await finalize(self)
atomicity.AtomicRenameTemporaryPath.finalize = final_rename

save_pretrained = checkpoint.save_pretrained
def export(model, model_config, directory, **kwargs):
    out = save_pretrained(model, model_config, directory, **kwargs)
    if kind == "export" and os.path.basename(directory) == "." + ("best" if at else "last") + ".tmp":
        if not at or trainer.step == at:
            die()
    return out
checkpoint.save_pretrained = export

try:
    trainer.train()
except Interrupted as err:
    print("STOPPED", err.step, flush=True)
    sys.exit(128 + err.signum)
finally:
    trainer.close()
"""

# (CRASH_AT, expected exit status): SIGKILL after step 3, in the best/ export at step 4 (inside validation), half
# way through and at the commit of checkpoint writes, SIGTERM and SIGINT, SIGKILL in the last/ export; the test then
# resumes once more in-process, to the end.
SCHEDULE = [
    ("step:3", -9),
    ("export:4", -9),
    ("write:4", -9),
    ("finalize:6", -9),
    ("sigterm:5", 128 + signal.SIGTERM),
    ("sigint:7", 128 + signal.SIGINT),
    ("export:0", -9),
]


CRASH_TEST = "test_killed_and_resumed_run_equals_an_uninterrupted_one"


class CrashChain:
    """The SCHEDULE of driver processes on one workdir, run one after the other in a background thread (so the
    in-process tests of this module use the other core meanwhile); `observed` records each exit and the folders."""

    def __init__(self, data_root: str, directory: Path):
        self.directory, self.run = directory, directory / "run"
        self.script = directory / "driver.py"
        self.script.write_text(DRIVER.format(tests=str(ROOT / "tests"), data=data_root, changes=CONFIG))
        self.env = {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "JAX_COMPILATION_CACHE_DIR": str(directory / "jit_cache"),  # compile once for all the processes
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        }
        self.observed: list[dict] = []
        self.process: subprocess.Popen | None = None
        self.cancelled = False
        self.thread = threading.Thread(target=self._drive, daemon=True)
        self.thread.start()

    def _drive(self) -> None:
        for point, status in SCHEDULE:
            if self.cancelled:
                return
            command = [sys.executable, str(self.script), str(self.run)]
            self.process = subprocess.Popen(
                command,
                env={**self.env, "CRASH_AT": point},
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            started = time.perf_counter()
            stdout, stderr = self.process.communicate(timeout=400)
            checkpoints = self.run / "checkpoints"
            self.observed.append(
                {
                    "point": point,
                    "status": status,
                    "returncode": self.process.returncode,
                    "seconds": round(time.perf_counter() - started, 1),
                    "stdout": stdout,
                    "stderr": stderr,
                    "checkpoints": sorted(p.name for p in checkpoints.iterdir()) if checkpoints.exists() else [],
                    "files": sorted(p.name for p in self.run.iterdir()) if self.run.exists() else [],
                }
            )
            if self.process.returncode != status:
                return

    def cancel(self) -> None:
        self.cancelled = True
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        self.thread.join(timeout=60)


@contextlib.contextmanager
def persistent_cache(directory: Path):
    """JAX's persistent compilation cache in `directory` for this process, for the duration of the `with`."""
    from jax.experimental.compilation_cache import compilation_cache

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    previous = {name: getattr(jax.config, name) for name in names}
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()


@pytest.fixture(scope="module", autouse=True)
def crash_chain(request, data_root, tmp_path_factory):
    """With the crash test selected: first the uninterrupted run, in-process, its compilations stored for the driver
    processes, then the chain in the background (waited for by the crash test)."""
    if not any(item.name == CRASH_TEST for item in request.session.items):
        yield None
        return
    directory = tmp_path_factory.mktemp("crash")
    with persistent_cache(directory / "jit_cache"):
        straight = Trainer(tiny_config(data_root, **CONFIG), directory / "straight")
        straight.train()
        straight.close()
    opt = {f"opt/{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(straight.state.opt))}
    chain = CrashChain(data_root, directory)
    chain.expected = {**straight.params(), **opt}
    chain.straight = straight.workdir
    yield chain
    chain.cancel()


def test_killed_and_resumed_run_equals_an_uninterrupted_one(data_root, crash_chain):
    expected, straight = crash_chain.expected, crash_chain.straight
    crash_chain.thread.join(timeout=900)
    run = crash_chain.run
    assert [o["point"] for o in crash_chain.observed] == [point for point, _ in SCHEDULE]
    for seen in crash_chain.observed:
        point, steps, files = seen["point"], seen["checkpoints"], seen["files"]
        assert seen["returncode"] == seen["status"], (point, seen["stderr"][-3000:])
        if point == "export:4":  # killed in the first best/ export: a temporary folder, no best/
            assert ".best.tmp" in files and "best" not in files
        if point in ("write:4", "finalize:6"):
            # the half-written / uncommitted checkpoint is a temporary folder the next run neither takes nor keeps
            assert any("orbax-checkpoint-tmp" in name for name in steps), steps
            assert point.split(":")[1] not in steps
        if point.startswith("sig"):  # preemption: a checkpoint at the step it stopped at
            assert f"STOPPED {point.split(':')[1]}" in seen["stdout"] and point.split(":")[1] in steps
            assert not any("tmp" in name for name in steps)
        if point == "export:0":
            assert ".last.tmp" in files and "last" not in files

    resumed = Trainer(tiny_config(data_root, **CONFIG), run)  # the same command once more: only last/ is left
    assert resumed.step == 8
    resumed.train()
    resumed.close()
    got = {**resumed.params(), **{f"opt/{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(resumed.state.opt))}}
    assert expected.keys() == got.keys() and any(k.startswith("opt/") for k in got)
    for name, value in expected.items():  # parameters, BatchNorm statistics, optimizer state: bitwise
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    for name in ("train.csv", "val.csv"):  # each step logged once, with the same values
        clean = [{k: v for k, v in row.items() if k != "images_per_s"} for row in rows(run / name)]
        assert clean == [{k: v for k, v in row.items() if k != "images_per_s"} for row in rows(straight / name)]
    totals = [step for tag, step, _ in read_events(run / "tensorboard") if tag == "train/total"]
    assert totals == list(range(1, 9))
    exported = nnx_values(run / "last")
    for name, value in nnx_values(straight / "last").items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    assert (
        json.loads((run / "best" / "config.json").read_text())["info"]["step"]
        == json.loads((straight / "best" / "config.json").read_text())["info"]["step"]
    )
    assert not any(p.name.startswith(".") for p in run.iterdir())
    losses = [float(row["total"]) for row in rows(run / "train.csv")]
    diff = max(float(np.max(np.abs(got[k] - expected[k]))) for k in expected)
    print("chain seconds", [seen["seconds"] for seen in crash_chain.observed])
    print(f"resume figures: final loss {losses[-1]:.6f}, max |resumed - uninterrupted| {diff:g}")
