"""The DINOv3-matting system in the shared loop: matting validation and best-by-MAE export, frozen backbone, exact
resume after a crash, data parallel on two fake devices, the exported preprocessing record read by the Predictor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from scripts import load_script

from jaxmatte.data import write_synthetic_matting
from jaxmatte.train import apply_override, load_config
from jaxmatte.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


def tiny_dinomatte(data_root: str, variant: str = "demo", **changes):
    """A 2-block 32-wide DINOv3 with the detail (or faithful) decoder at 64 px on soft-alpha data."""
    config = load_config(f"dinomatte.py:{variant}")
    b = config.model.backbone
    b.embed_dim, b.depth, b.num_heads = 32, 2, 2
    config.model.decoder_dims = (16, 8, 8) if config.model.preset.endswith("detail") else (32, 16, 16)
    config.model.fuse_dim, config.model.detail_dims = 16, (8, 8, 8)
    config.data.synthetic_root = ""
    config.data.train_roots = [f"{data_root}/train"]
    config.data.val_roots = [f"{data_root}/val"]
    config.data.size = 64
    config.data.val_batch_size = 2
    config.data.augmentation.p_shift_scale = 0.5  # exercise the linear mask warp too
    config.optim.batch_size = 2
    config.optim.lr = 1e-4
    config.optim.epochs = 2
    config.train.steps = STEPS
    config.train.val_every = 2
    config.train.val_at_start = False
    config.train.progress = False
    config.train.sample_count = 1
    for key, value in changes.items():
        apply_override(config, f"{key}={value}")
    return config


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("matting") / "synthetic"
    write_synthetic_matting(root, splits={"train": 6, "val": 2}, size=(48, 80), seed=2)
    return str(root)


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory):
    trainer = Trainer(tiny_dinomatte(data_root), tmp_path_factory.mktemp("straight"))
    initial = trainer.params()
    losses = trainer.train()
    trainer.close()
    return {"initial": initial, "losses": losses, "params": trainer.params(), "workdir": trainer.workdir}


def test_matting_validation_best_and_frozen_backbone(straight):
    terms = straight["losses"][1]
    assert {"charbonnier", "gradient", "laplacian", "total"} <= set(terms)
    before, after = straight["initial"], straight["params"]
    backbone = [n for n in before if n.startswith("backbone.")]
    decoder = [n for n in before if n.startswith("decoder.") and "kernel" in n]
    assert backbone and decoder
    for name in backbone:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert any(not np.array_equal(after[n], before[n]) for n in decoder)
    workdir = straight["workdir"]
    rows = [line.split(",") for line in (workdir / "val.csv").read_text().splitlines()]
    header = rows[0]
    assert {"MAE", "SAD", "MSE", "Grad", "Conn"} <= set(header) and "maxFm" not in header  # soft GT: no DIS block
    maes = [float(r[header.index("MAE")]) for r in rows[1:]]
    best = json.loads((workdir / "best" / "config.json").read_text())["info"]
    assert best["val"]["MAE"] == pytest.approx(min(maes))
    pre = best["preprocessing"]
    assert (pre["resize"], pre["size"], pre["mask_resample"], pre["quantization"]) == (
        "letterbox",
        64,
        "linear",
        "round",
    )


def test_evaluate_checkpoint_with_matting_metrics(data_root, straight, tmp_path, capsys):
    """`evaluate.py --checkpoint WORKDIR --data ROOT --trimap-dir T`: the system's matting set over the unknown
    region, equal to a direct evaluation of the saved predictions."""

    from jaxmatte.metrics.matting import matting_image_metrics, summarize_matting

    cli = load_script("evaluate")
    val = Path(data_root) / "val"
    out, preds = tmp_path / "eval.json", tmp_path / "preds"
    args = ["--checkpoint", straight["workdir"], "--data", val, "--trimap-dir", val / "trimaps"]
    assert cli.main([str(a) for a in [*args, "--json", out, "--save-preds", preds, "--worst", 0]]) == 0
    result = json.loads(out.read_text())["val"]
    assert result["metrics"] == "matting" and result["matting_region"] == "unknown" and result["images"] == 2
    assert "maxFm" not in result and result["prediction"]["family"] == "dinomatte"
    rows = []
    for gt_path in sorted((val / "alpha_maps").iterdir()):
        gt = cv2.imread(str(gt_path), cv2.IMREAD_GRAYSCALE)
        pred = cv2.imread(str(preds / "val" / f"{gt_path.stem}.png"), cv2.IMREAD_GRAYSCALE)
        trimap = cv2.imread(str(val / "trimaps" / f"{gt_path.stem}.png"), cv2.IMREAD_GRAYSCALE)
        assert pred.shape == gt.shape
        rows.append((np.abs(pred.astype(float) - gt).mean() / 255, matting_image_metrics(pred, gt, trimap)))
    assert result["MAE"] == pytest.approx(np.mean([mae for mae, _ in rows]), rel=1e-9)
    expected = summarize_matting([metrics for _, metrics in rows])
    assert {k: result[k] for k in expected} == pytest.approx(expected, rel=1e-9)


def test_exact_resume_after_crash(data_root, straight, tmp_path):
    first = Trainer(tiny_dinomatte(data_root), tmp_path)
    losses = first.train(until=2)
    first.close()
    second = Trainer(tiny_dinomatte(data_root), tmp_path)
    assert second.step == 2
    losses.update(second.train())
    second.close()
    for step, terms in straight["losses"].items():
        assert losses[step]["total"] == pytest.approx(terms["total"], abs=1e-6, rel=1e-6), step
    params = second.params()
    for name, value in straight["params"].items():
        np.testing.assert_allclose(params[name], value, atol=1e-6, rtol=1e-6, err_msg=name)


MULTI_DEVICE = """
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_default_matmul_precision", "highest")
sys.path.insert(0, {tests!r})
import numpy as np
from test_train_dinomatte import tiny_dinomatte
from jaxmatte.train.loop import Trainer
assert len(jax.devices()) == 2
trainer = Trainer(tiny_dinomatte({data!r}), {workdir!r})
losses = trainer.train()
trainer.close()
np.savez({out!r}, **trainer.params())
print("LOSSES" + json.dumps({{k: v["total"] for k, v in losses.items()}}))
"""


def test_data_parallel_matches_single_device(data_root, straight, tmp_path):
    out = tmp_path / "params.npz"
    code = MULTI_DEVICE.format(tests=str(ROOT / "tests"), data=data_root, workdir=str(tmp_path / "run"), out=str(out))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("LOSSES"))
    losses = {int(k): v for k, v in json.loads(line.removeprefix("LOSSES")).items()}
    for step, terms in straight["losses"].items():
        assert losses[step] == pytest.approx(terms["total"], rel=1e-4, abs=1e-5), step
    # Adam normalises each gradient entry: entries whose gradient is ~0 (a conv bias before BatchNorm) may move
    # differently by up to one lr per step; everything else, BatchNorm statistics included, agrees closely.
    params = dict(np.load(out))
    for name, value in straight["params"].items():
        np.testing.assert_allclose(params[name], value, atol=STEPS * 1e-4, rtol=1e-3, err_msg=name)
        assert np.mean(np.abs(params[name] - value)) < 1e-4, name


def test_faithful_variant_trains_and_predicts_with_pil(data_root, tmp_path):
    from jaxmatte.predict import Predictor

    config = tiny_dinomatte(data_root, "demo_faithful", **{"train.steps": 2, "data.size": 64})
    assert config.data.resample == "pil_bilinear" and config.model.preset == "faithful"
    trainer = Trainer(config, tmp_path)
    losses = trainer.train()
    trainer.close()
    assert all(np.isfinite(t["total"]) for t in losses.values())
    predictor = Predictor(tmp_path)
    assert predictor.preprocessing.resample == "pil_bilinear" and predictor.policy.kind == "stretch"
    alpha = predictor.predict_arrays([np.zeros((37, 53, 3), np.uint8)])[0]
    assert alpha.shape == (37, 53) and alpha.dtype == np.uint8
