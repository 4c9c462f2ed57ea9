"""The two Matting Prune stages on tiny networks: BN-sparsity training (scales 0.5, frozen zero biases, L1
sub-gradient before Adam, clamp), the pruning cfg written at the end, the pruned student's distillation, the frozen
teacher, exact resume, and the export predicting from trimaps."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from scripts import load_script

from jaxmatte import save_pretrained
from jaxmatte.data.composition import write_synthetic_composition
from jaxmatte.models.dim import DIM, DIMConfig
from jaxmatte.models.dim.pruning import CFG_FILE, load_cfg
from jaxmatte.models.dim.system import size_report, sparsity_transform
from jaxmatte.train import apply_override, load_config
from jaxmatte.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = (8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 1)
STEPS = 4


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dim_data")
    write_synthetic_composition(root / "train", num_fg=4, num_bg=4, size=(40, 56), seed=1)
    write_synthetic_composition(root / "val", num_fg=2, num_bg=2, size=(40, 56), seed=2)
    return root


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    model = DIM(DIMConfig(widths=WIDTHS), rngs=nnx.Rngs(5))
    model.eval()
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    save_pretrained(model, model.config, out, info={"kind": "test"})
    return out


def tiny_stage(variant: str, data_root: Path, teacher: Path, **changes) -> object:
    config = load_config(f"dim_prune.py:{variant}")
    config.model.widths = WIDTHS
    config.distill.teacher = str(teacher)
    config.data.synthetic_root = ""
    config.data.train_roots = [str(data_root / "train")]
    config.data.val_roots = [str(data_root / "val")]
    config.data.backgrounds_per_fg = 2
    config.augmentation.crop_sizes = [32, 48]
    config.augmentation.out_size = 32
    config.optim.batch_size = 2
    config.optim.lr = 1e-2
    config.train.steps = STEPS
    config.train.val_every = 2
    config.train.val_at_start = False
    config.train.progress = False
    config.train.sample_count = 1
    for key, value in changes.items():
        apply_override(config, f"{key}={value}")
    return config


def test_sparsity_subgradient_and_frozen_bias():
    params = {
        "down1": {"conv1": {"bn": {"scale": jnp.array([0.5, -0.2]), "bias": jnp.array([0.0, 0.0])}}},
        "up3": {"conv": {"bn": {"scale": jnp.array([0.3, -0.1]), "bias": jnp.array([0.0, 0.0])}}},
        "down2": {"conv1": {"conv": {"kernel": jnp.ones((1, 1, 2, 2))}}},
    }
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.25), params)
    tx = sparsity_transform(1e-4, 1e-5)
    updated, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updated["down1"]["conv1"]["bn"]["scale"], [0.25 + 1e-4, 0.25 - 1e-4])
    np.testing.assert_allclose(updated["up3"]["conv"]["bn"]["scale"], [0.25 + 1e-5, 0.25 - 1e-5])
    assert not np.any(updated["down1"]["conv1"]["bn"]["bias"]) and not np.any(updated["up3"]["conv"]["bn"]["bias"])
    np.testing.assert_array_equal(
        updated["down2"]["conv1"]["conv"]["kernel"], grads["down2"]["conv1"]["conv"]["kernel"]
    )
    clamp = optax.chain(tx, optax.clip(5.0))
    big = jax.tree.map(lambda p: jnp.full_like(p, 40.0), params)
    clamped, _ = clamp.update(big, clamp.init(params), params)
    assert float(jnp.max(clamped["down2"]["conv1"]["conv"]["kernel"])) == 5.0


@pytest.fixture(scope="module")
def prune_run(data_root, teacher_dir, tmp_path_factory):
    trainer = Trainer(tiny_stage("demo_prune", data_root, teacher_dir), tmp_path_factory.mktemp("prune"))
    initial = trainer.params()
    losses = trainer.train()
    trainer.close()
    return {"trainer": trainer, "initial": initial, "losses": losses, "params": trainer.params()}


def test_prune_stage_trains_sparse_and_writes_the_cfg(prune_run, teacher_dir):
    initial, params = prune_run["initial"], prune_run["params"]
    scales = [n for n in initial if n.endswith(".bn.scale") and not n.startswith("teacher.")]
    biases = [n for n in initial if n.endswith(".bn.bias") and not n.startswith("teacher.")]
    assert len(scales) == len(biases) == 18
    assert all(np.all(initial[n] == 0.5) for n in scales)
    assert all(np.all(params[n] == 0.0) for n in biases)  # frozen at zero
    assert any(not np.array_equal(initial[n], params[n]) for n in scales)
    teacher = [n for n in initial if n.startswith("teacher.")]
    assert teacher and all(np.array_equal(initial[n], params[n]) for n in teacher)
    terms = prune_run["losses"][STEPS]
    assert {"alpha", "kd", "spkd", "total"} <= set(terms)
    assert terms["total"] == pytest.approx(terms["alpha"] + terms["kd"] + terms["spkd"], rel=1e-5)
    workdir = prune_run["trainer"].workdir
    record = json.loads((workdir / CFG_FILE).read_text())
    cfg = load_cfg(workdir)
    assert list(cfg) == record["cfg"] and all(1 <= c <= w for c, w in zip(cfg, WIDTHS, strict=True))
    assert record["teacher"] == record["full_student"] == size_report(WIDTHS)
    student = size_report(cfg, projections=tuple(WIDTHS[i] for i in (3, 6, 9, 12)))
    assert record["pruned_student"] == student
    exported = json.loads((workdir / "last" / "config.json").read_text())
    assert exported["family"] == "dim" and exported["config"]["teacher"] is None


@pytest.fixture(scope="module")
def retrain_run(prune_run, data_root, teacher_dir, tmp_path_factory):
    config = tiny_stage("demo_retrain", data_root, teacher_dir, **{"pruning.cfg": str(prune_run["trainer"].workdir)})
    trainer = Trainer(config, tmp_path_factory.mktemp("retrain"))
    losses = trainer.train()
    trainer.close()
    return {"trainer": trainer, "config": config, "losses": losses, "params": trainer.params()}


def test_retrain_stage_builds_the_pruned_student(retrain_run, prune_run):
    trainer = retrain_run["trainer"]
    cfg = load_cfg(prune_run["trainer"].workdir)
    assert tuple(trainer.model_config.widths) == cfg
    params = retrain_run["params"]
    assert "feature5.kernel" in params and params["feature5.kernel"].shape[-2:] == (cfg[12], WIDTHS[12])
    assert {"alpha", "kd", "spkd"} <= set(retrain_run["losses"][STEPS])
    exported = json.loads((trainer.workdir / "best" / "config.json").read_text())
    assert exported["family"] == "dim_student" and tuple(exported["config"]["widths"]) == cfg


def test_retrain_resumes_exactly(retrain_run, tmp_path):
    config = retrain_run["config"]
    first = Trainer(config, tmp_path)
    losses = first.train(until=2)
    first.close()
    second = Trainer(config, tmp_path)
    assert second.step == 2
    losses.update(second.train())
    second.close()
    for step, terms in retrain_run["losses"].items():
        assert losses[step]["total"] == pytest.approx(terms["total"], rel=1e-6, abs=1e-7), step
    params = second.params()
    for name, value in retrain_run["params"].items():
        np.testing.assert_allclose(params[name], value, atol=1e-6, rtol=1e-6, err_msg=name)


def test_faithful_spkd_uses_the_last_pair_only(data_root, teacher_dir, tmp_path):
    config = tiny_stage("faithful_prune", data_root, teacher_dir, **{"train.steps": 1})
    from jaxmatte.train import state

    loss = state.make_loss(config)
    assert loss.spkd == "faithful" and config.augmentation.faithful_trimap


def test_export_predicts_from_trimaps(retrain_run, data_root, tmp_path):
    predict = load_script("predict")
    images, trimaps = tmp_path / "images", tmp_path / "trimaps"
    images.mkdir()
    trimaps.mkdir()
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, (h, w) in {"a": (37, 45), "b": (50, 33)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"{name}.png")
        Image.fromarray(rng.choice(np.array([0, 128, 255], np.uint8), (h, w))).save(trimaps / f"{name}.png")
    out = tmp_path / "out"
    workdir = retrain_run["trainer"].workdir
    code = predict.main([str(images), "--checkpoint", str(workdir), "--trimap-dir", str(trimaps), "--output", str(out)])
    assert code == 0
    from jaxmatte.data.io import read_mask

    for name in ("a", "b"):
        alpha, trimap = read_mask(out / f"{name}.png"), read_mask(trimaps / f"{name}.png")
        assert alpha.shape == trimap.shape
        assert np.all(alpha[trimap == 0] == 0) and np.all(alpha[trimap == 255] == 255)
