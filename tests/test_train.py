"""Training loop: exact resume, data parallelism on fake CPU devices, configs, frozen teacher, bad training files."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxmatte.data import write_synthetic_dis
from jaxmatte.train import apply_override, load_config, state
from jaxmatte.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


def tiny_config(data_root: str, **changes):
    """A TSR with a 4-stage 8-wide Swin at 64 px, frozen random teacher, drop path on, augmentation on."""
    config = load_config("tsr.py:demo")
    m = config.model
    m.embed_dim, m.depths, m.num_heads, m.window_size, m.safe_size = 8, (1, 1, 1, 1), (1, 1, 1, 1), 2, 64
    m.drop_path_rate = 0.2
    m.decoder_channels, m.head_channels = (32, 16, 8), (8, 8)
    m.refiner_mid_channels, m.refiner_num_blocks = 8, 1
    config.teacher.mode = "random"
    config.teacher.seed = 3
    config.data.synthetic_root = ""
    config.data.train_roots = [f"{data_root}/train"]
    config.data.val_roots = [f"{data_root}/val"]
    config.data.size = 64
    config.data.val_batch_size = 4
    config.optim.batch_size = 4
    config.optim.accum_steps = 1
    config.optim.lr = 1e-4
    config.optim.epochs = 2
    config.train.steps = STEPS
    config.train.val_every = 1000  # validate at the end only
    config.train.val_at_start = False
    config.train.progress = False
    config.train.sample_count = 2
    for key, value in changes.items():
        apply_override(config, f"{key}={value}")
    return config


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synthetic"
    write_synthetic_dis(root, splits={"train": 8, "val": 4}, size_range=((64, 96), (64, 96)), seed=1)
    return str(root)


@pytest.fixture(scope="module")
def straight_run(data_root, tmp_path_factory):
    """Losses and final parameters of an uninterrupted run."""
    trainer = Trainer(tiny_config(data_root), tmp_path_factory.mktemp("straight"))
    initial = trainer.params()
    losses = trainer.train()
    trainer.close()
    return {"initial": initial, "losses": losses, "params": trainer.params(), "workdir": trainer.workdir}


def test_exact_resume_after_crash(data_root, straight_run, tmp_path):
    first = Trainer(tiny_config(data_root), tmp_path)
    losses = first.train(until=2)
    first.close()
    del first  # "crash": a fresh trainer reads the same workdir
    second = Trainer(tiny_config(data_root), tmp_path)
    assert second.step == 2
    losses.update(second.train())
    second.close()
    assert sorted(losses) == list(range(1, STEPS + 1))
    for step, terms in straight_run["losses"].items():
        assert losses[step]["total"] == pytest.approx(terms["total"], abs=1e-6, rel=1e-6), step
    params = second.params()
    assert params.keys() == straight_run["params"].keys()
    for name, value in straight_run["params"].items():
        np.testing.assert_allclose(params[name], value, atol=1e-6, rtol=1e-6, err_msg=name)


def test_teacher_frozen_and_alignment_term(straight_run):
    terms = straight_run["losses"][1]
    assert "feat" in terms and terms["feat"] > 0
    before, after = straight_run["initial"], straight_run["params"]
    teacher = [name for name in before if name.startswith("teacher.")]
    student = [name for name in before if name.startswith("student.") and "kernel" in name]
    assert teacher and student
    for name in teacher:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert any(not np.array_equal(after[name], before[name]) for name in student)


def test_teacher_off_has_no_alignment_term(data_root):
    import jax
    import jax.numpy as jnp

    config = tiny_config(data_root, **{"teacher.mode": "off"})
    arch = state.model_config(config)
    assert arch.teacher is None
    model = state.build_model(config, arch)
    model.eval()  # nothing to mutate under eval_shape
    spec = state.LossSpec.from_config(config)
    assert spec.w_feat == 0.0
    image, mask = jnp.zeros((1, 64, 64, 3)), jnp.ones((1, 64, 64, 1))
    terms = jax.eval_shape(lambda: state.compute_loss(spec, model, model(image), mask)[1])
    assert "feat" not in terms and "refined/l1" in terms


def test_training_outputs(straight_run):
    workdir = straight_run["workdir"]
    for name in ("best", "last"):
        meta = json.loads((workdir / name / "config.json").read_text())
        info = meta["info"]
        assert meta["family"] == "tsr" and meta["config"]["teacher"] is None
        assert info["preprocess"]["resize_policy"] == "letterbox" and info["preprocess"]["input_size"] == [64, 64]
        assert info["step"] == STEPS and "maxFm" in info["val"] and info["trained_by"] == "jaxmatte"
    from jaxmatte import load_pretrained

    model = load_pretrained(workdir / "last")
    assert model.teacher is None
    for name in ("train.csv", "val.csv", "loss.png", f"samples/step_{STEPS:06d}.png"):
        assert (workdir / name).is_file(), name


MULTI_DEVICE = """
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", {devices})
jax.config.update("jax_default_matmul_precision", "highest")
sys.path.insert(0, {tests!r})
import numpy as np
from test_train import tiny_config
from jaxmatte.train.loop import Trainer
assert len(jax.devices()) == {devices}
trainer = Trainer(tiny_config({data!r}), {workdir!r})
losses = trainer.train()
trainer.close()
np.savez({out!r}, **trainer.params())
print("LOSSES" + json.dumps({{k: v["total"] for k, v in losses.items()}}))
"""


def test_data_parallel_matches_single_device(data_root, straight_run, tmp_path):
    out = tmp_path / "params.npz"
    code = MULTI_DEVICE.format(
        devices=2, tests=str(ROOT / "tests"), data=data_root, workdir=str(tmp_path / "run"), out=str(out)
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("LOSSES"))
    losses = {int(k): v for k, v in json.loads(line.removeprefix("LOSSES")).items()}
    for step, terms in straight_run["losses"].items():
        assert losses[step] == pytest.approx(terms["total"], rel=1e-4, abs=1e-5), step
    # Adam normalises each gradient entry, so entries with gradients near 0 may move differently by up to a few lr
    # (lr 1e-4, 4 steps); everything else, BatchNorm statistics included, agrees closely.
    params = dict(np.load(out))
    for name, value in straight_run["params"].items():
        np.testing.assert_allclose(params[name], value, atol=2e-4, rtol=1e-3, err_msg=name)
        assert np.mean(np.abs(params[name] - value)) < 1e-5, name


def test_corrupt_training_image_is_reported_and_skipped(data_root, tmp_path, caplog):
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    victim = sorted((root / "train" / "im").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])  # header intact, pixels truncated
    (root / "train" / "im" / "zz_garbage.jpg").write_bytes(b"not an image at all")
    shutil.copy(root / "train" / "gt" / f"{victim.stem}.png", root / "train" / "gt" / "zz_garbage.png")
    caplog.set_level(logging.WARNING)
    trainer = Trainer(tiny_config(str(root), **{"train.steps": 2}), tmp_path / "run")
    losses = trainer.train()
    trainer.close()
    assert len(losses) == 2 and all(np.isfinite(t["total"]) for t in losses.values())
    reported = caplog.text
    assert "zz_garbage.jpg" in reported
    assert victim.name in reported


def test_config_variants_overrides_and_names():
    default = load_config("configs/tsr.py")
    assert default.variant == "default" and default.model.preset == "base" and default.data.size == 1024
    assert default.data.train_roots == ["DIS5K/DIS-TR"] and default.data.val_roots == ["DIS5K/DIS-VD"]
    assert (default.optim.batch_size, default.optim.accum_steps, default.optim.epochs) == (2, 4, 70)
    assert (default.optim.lr, default.optim.weight_decay, default.data.policy) == (1e-4, 1e-4, "letterbox")
    demo = load_config("tsr.py:demo", ["optim.lr=3e-4", "model.depths=[1, 1, 1, 1]", "data.policy=stretch"])
    assert demo.variant == "demo" and demo.optim.lr == 3e-4 and demo.model.depths == (1, 1, 1, 1)
    assert demo.data.policy == "stretch"
    assert load_config("tsr:faithful").teacher.mode == "random"
    assert load_config("twinswin.py").optim.batch_size == 16
    with pytest.raises(TypeError):
        load_config("tsr.py", ["optim.epochs=many"])
    with pytest.raises(TypeError):
        load_config("tsr.py", ["model.detach_coarse=1"])
    with pytest.raises(KeyError):
        load_config("tsr.py", ["optim.learning_rate=1e-3"])
    with pytest.raises(FileNotFoundError):
        load_config("nope.py")
    with pytest.raises(ValueError):
        load_config("tsr.py:nope")
    arch = state.model_config(demo)
    assert arch.backbone.depths == (1, 1, 1, 1) and arch.img_size == demo.data.size


def test_cli_rejects_bad_override(capsys):
    sys.path.insert(0, str(ROOT))
    import train

    assert train.main(["--config", "tsr.py:demo", "--config.optim.epochs=x"]) == 2
    assert "optim.epochs" in capsys.readouterr().err


def test_epoch_schedule():
    schedule = state.epoch_schedule(1e-4, 1e-6, 70, 10)
    assert float(schedule(0)) == pytest.approx(1e-4)
    assert float(schedule(9)) == pytest.approx(1e-4)
    expected = 1e-6 + (1e-4 - 1e-6) * (1 + np.cos(np.pi * 1 / 70)) / 2
    assert float(schedule(10)) == pytest.approx(expected, rel=1e-6)
    assert float(schedule(699)) == pytest.approx(1e-6 + (1e-4 - 1e-6) * (1 + np.cos(np.pi * 69 / 70)) / 2, rel=1e-5)
