"""Training loop: exact resume, data parallelism on fake CPU devices, worker processes, gradient accumulation, the
teacher modes, logs, configs, bad training files."""

import csv
import dataclasses
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
from jaxmatte.data.pipeline import make_dataset, make_iterator
from jaxmatte.train import apply_override, load_config, state
from jaxmatte.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


def tiny_config(data_root: str, spec: str = "tsr.py:demo", **changes):
    """A TSR (or `spec`'s model) with a 4-stage 8-wide Swin at 64 px, frozen random teacher, drop path on,
    augmentation on."""
    config = load_config(spec)
    m = config.model
    b = m.backbone
    b.embed_dim, b.depths, b.num_heads, b.window_size, m.safe_size = 8, (1, 1, 1, 1), (1, 1, 1, 1), 2, 64
    b.drop_path_rate = 0.2
    m.decoder_channels, m.head_channels = (32, 16, 8), (8, 8)
    if m.family == "tsr":
        m.refiner.mid_channels, m.refiner.num_blocks = 8, 1
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
    spec = state.make_loss(config)
    assert spec.w_feat == 0.0
    image, mask = jnp.zeros((1, 64, 64, 3)), jnp.ones((1, 64, 64, 1))
    terms = jax.eval_shape(lambda: state.compute_loss(spec, model, {"image": image, "mask": mask})[1])
    assert "feat" not in terms and "refined/l1" in terms


def test_training_outputs(straight_run):
    workdir = straight_run["workdir"]
    for name in ("best", "last"):
        meta = json.loads((workdir / name / "config.json").read_text())
        info = meta["info"]
        assert meta["family"] == "tsr" and meta["config"]["teacher"] is None
        assert info["preprocessing"]["resize"] == "letterbox" and info["preprocessing"]["size"] == 64
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
    demo = load_config("tsr.py:demo", ["optim.lr=3e-4", "model.backbone.depths=[1, 1, 1, 1]", "data.policy=stretch"])
    assert demo.variant == "demo" and demo.optim.lr == 3e-4 and demo.model.backbone.depths == (1, 1, 1, 1)
    assert demo.data.policy == "stretch"
    faithful = load_config("tsr:faithful")
    assert faithful.teacher.mode == "random" and faithful.optim.drop_partial_accumulation
    twinswin_faithful = load_config("twinswin:faithful")
    assert twinswin_faithful.teacher.mode == "off" and twinswin_faithful.optim.drop_partial_accumulation
    with pytest.raises(ValueError, match="teacher.path"):
        state.model_config(load_config("tsr.py", ["teacher.path=somewhere"]))
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


def test_epoch_schedule_with_accumulation():
    lr = lambda epoch: 1e-6 + (1e-4 - 1e-6) * (1 + np.cos(np.pi * epoch / 70)) / 2  # noqa: E731
    # 10 micro-batches per epoch, 4 per update: updates end at micro-batches 4, 8 | 12, 16, 20 | 24, ...
    carry_on = state.epoch_schedule(1e-4, 1e-6, 70, 10, accum=4)
    assert [float(carry_on(n)) for n in range(6)] == pytest.approx([lr(0), lr(0), lr(1), lr(1), lr(1), lr(2)])
    # The original resets at each epoch start: two updates per epoch, micro-batches 9-10 lost.
    dropped = state.epoch_schedule(1e-4, 1e-6, 70, 10, accum=4, drop_partial=True)
    assert [float(dropped(n)) for n in range(6)] == pytest.approx([lr(0), lr(0), lr(1), lr(1), lr(2), lr(2)])


def eval_mode_state(config):
    """Graph definition and train state of a model whose output per image does not depend on the rest of the batch
    (running BatchNorm statistics, no drop path), so micro-batches and the whole batch see the same gradients."""
    arch = state.model_config(config)
    model = state.build_model(config, arch)
    model.eval()
    tx = state.make_optimizer(config.optim, steps_per_epoch=100)
    graphdef, train_state = state.init_state(model, tx)
    return graphdef, tx, train_state


def random_batch(seed, size):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.standard_normal((size, 64, 64, 3)).astype(np.float32),
        "mask": (rng.random((size, 64, 64, 1)) > 0.6).astype(np.float32),
    }


def adam_moments(opt_state):
    """The leaves of Adam's first and second moments in `opt_state`."""
    import jax
    import optax

    found = optax.tree.get_all_with_path(opt_state, "mu") + optax.tree.get_all_with_path(opt_state, "nu")
    assert len(found) == 2
    return [np.asarray(leaf) for _, moment in found for leaf in jax.tree.leaves(moment)]


def copy_state(train_state):
    import jax
    import jax.numpy as jnp

    return jax.tree.map(jnp.array, train_state)


def test_gradient_accumulation_equals_the_whole_batch(data_root):
    import jax

    base = {"teacher.mode": "off", "optim.clip_norm": 1e6, "optim.lr": 1e-3}
    whole = tiny_config(data_root, **base, **{"optim.accum_steps": 1, "optim.batch_size": 4})
    micro = tiny_config(data_root, **base, **{"optim.accum_steps": 2, "optim.batch_size": 2})
    batch = random_batch(0, 4)
    halves = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
    spec = state.make_loss(whole)

    graphdef, tx, reference = eval_mode_state(whole)
    initial = copy_state(reference.params)
    reference, _ = state.train_step(graphdef, tx, spec, reference, batch)

    graphdef, tx, accumulated = eval_mode_state(micro)
    accumulated, _ = state.train_step(graphdef, tx, spec, accumulated, halves[0])
    for before, after in zip(jax.tree.leaves(initial), jax.tree.leaves(accumulated.params), strict=True):
        np.testing.assert_array_equal(before, after)  # no update after the first of two micro-batches
    accumulated, _ = state.train_step(graphdef, tx, spec, accumulated, halves[1])
    for expected, got in zip(jax.tree.leaves(reference.params), jax.tree.leaves(accumulated.params), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=1e-5)
    # Adam's moments hold the mean gradient (a sum would double mu and quadruple nu).
    inner = accumulated.opt.inner_opt_state
    for expected, got in zip(adam_moments(reference.opt), adam_moments(inner), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-9, rtol=1e-4)


def test_drop_partial_accumulation_discards_leftover_micro_batches(data_root):
    import jax

    config = tiny_config(data_root, **{"teacher.mode": "off", "optim.accum_steps": 3, "optim.batch_size": 2})
    spec = state.make_loss(config)
    batches = [random_batch(seed, 2) for seed in range(5)]
    graphdef, tx, fresh = eval_mode_state(config)
    _, _, dropped = eval_mode_state(config)
    for batch in batches[:2]:  # an epoch end after two of three micro-batches
        dropped, _ = state.train_step(graphdef, tx, spec, dropped, batch)
    dropped = dropped._replace(opt=state.drop_partial_accumulation(dropped.opt))
    assert int(dropped.opt.mini_step) == 0
    assert all(not np.any(leaf) for leaf in jax.tree.leaves(dropped.opt.acc_grads))
    for batch in batches[2:]:
        dropped, _ = state.train_step(graphdef, tx, spec, dropped, batch)
        fresh, _ = state.train_step(graphdef, tx, spec, fresh, batch)
    for expected, got in zip(jax.tree.leaves(fresh.params), jax.tree.leaves(dropped.params), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_worker_processes_give_the_same_training(data_root, straight_run, tmp_path):
    trainer = Trainer(tiny_config(data_root, **{"data.workers": 2, "train.steps": 2}), tmp_path)
    in_process = type(make_iterator(make_dataset(trainer.train_source, trainer.policy, train=True, batch_size=4)))
    assert type(trainer.iterator) is not in_process  # the batches really come from worker processes
    losses = trainer.train()
    trainer.close()
    assert sorted(losses) == [1, 2]
    for step, terms in losses.items():
        assert terms["total"] == pytest.approx(straight_run["losses"][step]["total"], abs=1e-6, rel=1e-6), step


def read_events(directory):
    """(tag, step, value) of the scalar summaries in TensorBoard event files (TFRecord framing)."""
    import struct

    from tensorboardX.proto import event_pb2

    rows = []
    for path in sorted(Path(directory).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                rows.append((value.tag, event.step, value.simple_value))
    return rows


def test_tensorboard_events_hold_the_logged_terms(straight_run):
    rows = read_events(straight_run["workdir"] / "tensorboard")
    totals = {step: value for tag, step, value in rows if tag == "train/total"}
    logged = [int(row["step"]) for row in csv.DictReader((straight_run["workdir"] / "train.csv").open())]
    assert sorted(totals) == logged and STEPS in logged  # the steps of train.csv (every log_every and epoch end)
    for step, value in totals.items():
        assert value == pytest.approx(straight_run["losses"][step]["total"], rel=1e-6)
    val_steps = [step for tag, step, _ in rows if tag == "val/maxFm"]
    assert val_steps == [STEPS]
    assert any(tag == "train/lr" for tag, _, _ in rows)


@pytest.fixture(scope="module")
def pretrained_run(data_root, tmp_path_factory):
    config = tiny_config(
        data_root,
        **{"teacher.mode": "pretrained", "teacher.steps": 40, "teacher.batch_size": 4, "train.steps": 2},
    )
    config.train.log_every = 1
    workdir = tmp_path_factory.mktemp("pretrained")
    trainer = Trainer(config, workdir)
    after_pretraining = trainer.params()
    losses = trainer.train()
    trainer.close()
    return {
        "config": config,
        "workdir": workdir,
        "after_pretraining": after_pretraining,
        "losses": losses,
        "params": trainer.params(),
    }


def test_pretrained_teacher_learns_masks_then_is_frozen(data_root, pretrained_run):
    import jax.numpy as jnp
    from flax import nnx

    from jaxmatte import load_pretrained
    from jaxmatte.data import DISFolders
    from jaxmatte.data.transforms import ResizePolicy
    from jaxmatte.models.tsr import modeling

    workdir, params = pretrained_run["workdir"], pretrained_run["after_pretraining"]
    rows = list(csv.DictReader((workdir / "teacher.csv").open()))
    assert len(rows) == 40
    first = np.mean([float(row["total"]) for row in rows[:8]])
    last = np.mean([float(row["total"]) for row in rows[-8:]])
    assert last < 0.9 * first, (first, last)

    arch = state.model_config(pretrained_run["config"])
    assert arch.teacher.relu_outputs
    untrained = nnx.state(modeling.MaskEncoder(arch.teacher, rngs=nnx.Rngs(arch.teacher.init_seed)))
    untrained = {"teacher." + ".".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(untrained)}
    teacher_keys = [name for name in params if name.startswith("teacher.")]
    assert sorted(teacher_keys) == sorted(untrained)
    assert not np.array_equal(params["teacher.stem.conv.kernel"], untrained["teacher.stem.conv.kernel"])
    assert np.any(params["teacher.down1.block.bn1.mean"] != 0)  # BatchNorm statistics calibrated on masks

    saved = load_pretrained(workdir / "teacher")
    assert isinstance(saved, modeling.MaskEncoder)
    for name, value in nnx.to_flat_state(nnx.state(saved)):
        np.testing.assert_array_equal(params["teacher." + ".".join(map(str, name))], np.asarray(value.get_value()))
    for name in teacher_keys:  # frozen while the student trains
        np.testing.assert_array_equal(pretrained_run["params"][name], params[name], err_msg=name)
    assert pretrained_run["losses"][1]["feat"] > 0
    # outputs rescaled to unit RMS over training masks
    val = json.loads((workdir / "teacher" / "config.json").read_text())["info"]["val"]
    assert val["p2_rms"] > 0 and val["p1_rms"] > 0 and 0 <= val["iou"] <= 1
    train = DISFolders([f"{data_root}/train"])
    masks = make_dataset(train, ResizePolicy("letterbox", 64), train=False, batch_size=len(train))[0]["mask"]
    for feature in saved(jnp.asarray(masks)):
        assert 0.5 < float(jnp.sqrt(jnp.mean(jnp.square(feature)))) < 2.0


def test_pretrained_teacher_is_reused_from_a_path_and_checked(pretrained_run, tmp_path):
    from flax import nnx

    from jaxmatte.models.tsr import modeling
    from jaxmatte.pretrained import save_pretrained

    config = pretrained_run["config"].copy_and_resolve_references()
    config.teacher.path = str(pretrained_run["workdir"] / "teacher")
    trainer = Trainer(config, tmp_path / "reuse")
    params = trainer.params()
    losses = trainer.train(until=1)
    trainer.close()
    assert not (tmp_path / "reuse" / "teacher.csv").exists()
    for name, value in pretrained_run["after_pretraining"].items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)
    assert losses[1]["total"] == pytest.approx(pretrained_run["losses"][1]["total"], abs=1e-6, rel=1e-6)

    wrong = modeling.MaskEncoderConfig(dims=(16, 32, 64, 128), relu_outputs=True)
    save_pretrained(modeling.MaskEncoder(wrong, rngs=nnx.Rngs(0)), wrong, tmp_path / "wrong")
    config.teacher.path = str(tmp_path / "wrong")
    with pytest.raises(ValueError, match="wrong"):
        Trainer(config, tmp_path / "mismatch")


def test_twinswin_faithful_recipe_runs_and_drops_leftover_micro_batches(data_root, tmp_path):
    # 8 images, batch 4: 2 micro-batches per epoch, 3 per update, so every epoch ends with a partial accumulation
    changes = {"optim.accum_steps": 3, "train.steps": 4, "teacher.mode": "off"}  # the preset's teacher
    config = tiny_config(data_root, "twinswin.py:faithful", **changes)
    assert config.optim.drop_partial_accumulation and config.model.family == "twinswin"
    trainer = Trainer(config, tmp_path)
    initial = trainer.params()
    losses = trainer.train()
    assert int(trainer.state.opt.mini_step) == 0  # reset at the end of epoch 2
    params = trainer.params()
    trainer.close()
    assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(t["total"]) for t in losses.values())
    assert "feat" not in losses[1] and "refined/l1" not in losses[1]
    # no update ever completed: 2 micro-batches per epoch never reach 3
    for name, value in initial.items():
        if "kernel" in name:
            np.testing.assert_array_equal(params[name], value, err_msg=name)


def test_warm_start_from_backbone_weights_and_from_a_model(data_root, straight_run, tmp_path):
    from flax import nnx

    from jaxmatte.backbones.swin import SwinTransformer
    from jaxmatte.pretrained import save_pretrained

    config = tiny_config(data_root, **{"teacher.mode": "off"})
    backbone_config = state.model_config(config).backbone
    save_pretrained(SwinTransformer(backbone_config, rngs=nnx.Rngs(123)), backbone_config, tmp_path / "swin")
    imagenet = {f"student.backbone.{k}": v for k, v in nnx_values(tmp_path / "swin").items()}

    scratch = Trainer(config, tmp_path / "scratch").params()
    warm = Trainer(
        tiny_config(data_root, **{"teacher.mode": "off", "model.backbone_weights": str(tmp_path / "swin")}),
        tmp_path / "warm",
    ).params()
    assert warm.keys() == scratch.keys() and set(imagenet) < set(warm)
    for name, value in warm.items():
        expected = imagenet.get(name, scratch[name])  # the backbone from the file, everything else as from scratch
        np.testing.assert_array_equal(value, expected, err_msg=name)
    assert not np.array_equal(
        warm["student.backbone.patch_embed.proj.kernel"], scratch["student.backbone.patch_embed.proj.kernel"]
    )

    released = straight_run["workdir"] / "last"  # an exported TSR: student and refiner
    tuned = Trainer(
        tiny_config(data_root, **{"teacher.mode": "off", "model.init_from": str(released)}), tmp_path / "tuned"
    ).params()
    for name, value in nnx_values(released).items():
        np.testing.assert_array_equal(tuned[name], value, err_msg=name)

    wider = dataclasses.replace(backbone_config, embed_dim=16)
    save_pretrained(SwinTransformer(wider, rngs=nnx.Rngs(0)), wider, tmp_path / "wider")
    with pytest.raises(ValueError, match="wider"):
        Trainer(tiny_config(data_root, **{"model.backbone_weights": str(tmp_path / "wider")}), tmp_path / "bad")
    with pytest.raises(ValueError, match="port/convert.py swin"):
        Trainer(tiny_config(data_root, **{"model.backbone_weights": str(released)}), tmp_path / "bad2")
    # only a preset architecture (for which ImageNet weights exist) warns about a random backbone
    assert state.customised_backbone(config) and not state.customised_backbone(load_config("tsr.py"))


def nnx_values(directory):
    """Dotted name -> numpy value of the parameters and statistics stored in a `save_pretrained` directory."""
    from flax import nnx

    from jaxmatte import load_pretrained

    module = load_pretrained(directory)
    flat = nnx.to_flat_state(nnx.state(module, nnx.Any(nnx.Param, nnx.BatchStat)))
    return {".".join(map(str, path)): np.asarray(value.get_value()) for path, value in flat}
