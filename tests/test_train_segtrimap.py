"""SegTrimap in the shared loop: the data fields (input mask, §6.2 labels, ignore padding, distance map), the §7.1
augmentation, the §9 schedule, trimap validation and best-by-mIoU export, exact resume after a crash, data parallel on
two fake devices, and the exported directory read by predict.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from scripts import load_script

from jaxmatte import registry
from jaxmatte.data import write_synthetic_matting
from jaxmatte.data.transforms import ResizePolicy
from jaxmatte.data.trimaps import binarize_mask, mask_from_alpha, record_labels, trimap_from_alpha
from jaxmatte.models.segtrimap.data import IGNORE_LABEL, SegTrimapAugment, SegTrimapFields
from jaxmatte.models.segtrimap.recipe import layerwise_settings
from jaxmatte.train import apply_override, load_config, param_groups, state
from jaxmatte.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


def tiny_segtrimap(data_root: str, **changes):
    """A 2-block 32-wide SegTrimap at 64 px (4x4 tokens, windows of 2, block 2 global) on soft-alpha data."""
    config = load_config("segtrimap.py:demo")
    b = config.model.backbone
    b.img_size, b.embed_dim, b.depth, b.num_heads, b.window_size, b.global_every = (64, 64), 32, 2, 2, 2, 2
    config.model.neck_dims = (8, 16, 32, 64)
    config.model.head_width = 32
    config.data.synthetic_root = ""
    config.data.train_roots = [f"{data_root}/train"]
    config.data.val_roots = [f"{data_root}/val"]
    config.data.size = 64
    config.data.val_batch_size = 2
    config.optim.batch_size = 2
    config.optim.lr = 1e-3
    config.optim.epochs = 2
    config.optim.milestones = (1,)
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
    root = tmp_path_factory.mktemp("segtrimap") / "synthetic"
    write_synthetic_matting(root, splits={"train": 6, "val": 2}, size=(48, 80), seed=3)
    return str(root)


# ------------------------------------------------------------------------------------------------------------ data


def test_input_mask_and_label_rules():
    alpha = np.array([[0, 29, 30, 31, 255]], np.uint8)
    np.testing.assert_array_equal(mask_from_alpha(alpha), [[0, 0, 1, 1, 1]])
    np.testing.assert_array_equal(binarize_mask(np.array([[0, 1, 1]], np.uint8)), [[0, 1, 1]])  # 0 / 1 mask as is
    np.testing.assert_array_equal(binarize_mask(np.array([[0, 29, 255]], np.uint8)), [[0, 0, 1]])
    trimap = np.array([[0, 14, 15, 128, 229, 230, 255]], np.uint8)
    np.testing.assert_array_equal(record_labels({"trimap": trimap, "mask": trimap}), [[0, 0, 1, 1, 1, 2, 2]])


def test_trimap_from_alpha_marks_a_band_around_fractional_alpha():
    alpha = np.zeros((21, 21), np.uint8)
    alpha[:, 11:] = 255
    alpha[:, 10] = 128
    trimap = trimap_from_alpha(alpha, band=3)
    assert set(np.unique(trimap)) == {0, 128, 255}
    unknown_columns = np.flatnonzero((trimap == 128).all(axis=0))
    np.testing.assert_array_equal(unknown_columns, np.arange(7, 14))  # column 10 +- 3
    assert (trimap[:, :7] == 0).all() and (trimap[:, 14:] == 255).all()


def test_fields_letterbox_ignore_padding_and_distance():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 60, 3), np.uint8)
    alpha = np.zeros((30, 60), np.uint8)
    alpha[5:25, 10:50] = 255
    alpha[5:25, 10:14] = 100
    trimap = trimap_from_alpha(alpha, 2)
    policy = ResizePolicy("letterbox", 64)
    fields, placement = SegTrimapFields(policy)({"image": image, "mask": alpha, "trimap": trimap}, True)
    labels = fields["labels"]
    assert labels.dtype == np.int32 and labels.shape == (64, 64)
    assert (placement.top, placement.inner_height) == (16, 32)
    assert (labels[:16] == IGNORE_LABEL).all() and (labels[48:] == IGNORE_LABEL).all()
    inner = labels[16:48]
    assert set(np.unique(inner)) == {0, 1, 2}
    np.testing.assert_allclose(fields["distance"], ndimage.distance_transform_edt(labels == 1), rtol=1e-6)
    mask = fields["input_mask"][..., 0]
    assert set(np.unique(mask)) == {0.0, 1.0} and mask[:16].max() == 0.0
    faithful, _ = SegTrimapFields(policy, ignore_padding=False)({"image": image, "mask": alpha, "trimap": trimap}, True)
    assert (faithful["labels"][:16] == 0).all()  # the original: padding is background
    eval_fields, _ = SegTrimapFields(policy)({"image": image, "mask": alpha}, False)
    assert set(eval_fields) == {"image", "input_mask"}


def test_augment_flips_every_map_together_and_jitters_only_the_image():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (12, 17, 3), np.uint8)
    alpha = np.zeros((12, 17), np.uint8)
    alpha[:, :5] = 255
    record = {"image": image, "mask": alpha, "trimap": trimap_from_alpha(alpha, 1), "name": "x"}
    flip_only = SegTrimapAugment(p_flip=1.0, p_brightness_contrast=0.0, p_rgb_shift=0.0)
    out = flip_only.random_map(record, np.random.default_rng(0))
    np.testing.assert_array_equal(out["image"], image[:, ::-1])
    np.testing.assert_array_equal(out["mask"], alpha[:, ::-1])
    np.testing.assert_array_equal(out["trimap"], record["trimap"][:, ::-1])
    np.testing.assert_array_equal(out["input_mask"], mask_from_alpha(alpha)[:, ::-1])
    colour = SegTrimapAugment(p_flip=0.0, p_brightness_contrast=1.0, p_rgb_shift=1.0)
    out = colour.random_map(record, np.random.default_rng(3))
    assert not np.array_equal(out["image"], image)
    np.testing.assert_array_equal(out["mask"], alpha)
    corrupt = SegTrimapAugment(p_flip=0.0, p_brightness_contrast=0.0, p_rgb_shift=0.0, p_edge_noise=1.0, p_hole=1.0)
    out = corrupt.random_map({**record, "mask": np.pad(alpha[:, :12], ((0, 0), (3, 2)))}, np.random.default_rng(5))
    assert set(np.unique(out["input_mask"])) <= {0, 1}


def test_multistep_schedule_steps_per_epoch():
    config = load_config("segtrimap.py")
    assert (config.optim.schedule, tuple(config.optim.milestones), config.optim.epochs) == ("multistep", (50, 55), 55)
    steps = 10
    lrs = [state.learning_rate(config.optim, steps, epoch * steps) for epoch in (0, 49, 50, 54)]
    assert lrs == pytest.approx([1e-4, 1e-4, 1e-5, 1e-5])
    assert state.learning_rate(config.optim, steps, 50 * steps - 1) == pytest.approx(1e-4)


def _first_updates(config, grad):
    model_config = state.model_config(config)
    model = state.build_model(config, model_config)
    lr_layers = registry.system("segtrimap").lr_layers(model_config)
    tx = state.make_optimizer(config.optim, 10, lr_layers)
    _, train = state.init_state(model, tx)
    grads = jax.tree.map(lambda p: jnp.full_like(p, grad), train.params)
    updates, _ = tx.update(grads, train.opt, train.params)
    flat = jax.tree_util.tree_flatten_with_path(updates)[0]
    params = dict(jax.tree_util.tree_flatten_with_path(train.params)[0])
    return {param_groups.path_keys(p): (np.asarray(u), np.asarray(params[p])) for p, u in flat}


def test_layerwise_decay_scales_each_layer_and_includes_the_mask_embedding(data_root):
    config = tiny_segtrimap(data_root)
    layerwise_settings(config)
    config.optim.weight_decay = 0.0
    lr, depth = config.optim.lr, config.model.backbone.depth
    expected = {0: 0.75 ** (depth + 1), 1: 0.75**depth, 2: 0.75 ** (depth - 1), depth + 1: 1.0}
    seen = set()
    for keys, (update, _) in _first_updates(config, grad=1.0).items():
        if keys[0] in ("patch_embed_mask",) or keys[:2] in (("backbone", "patch_embed"), ("backbone", "pos_embed")):
            layer = 0
        elif keys[:2] == ("backbone", "blocks"):
            layer = keys[2] + 1
        else:
            assert keys[0] in ("neck", "head") or keys[:2] == ("backbone", "cls_token"), keys
            layer = 0 if keys[0] == "backbone" else depth + 1
        seen.add(layer)
        np.testing.assert_allclose(update, -lr * expected[layer], rtol=1e-4, err_msg=str(keys))
    assert seen == set(expected)


def test_weight_decay_on_matrices_skips_biases_norms_and_embeddings(data_root):
    config = tiny_segtrimap(data_root)
    layerwise_settings(config)
    config.optim.layer_decay = 1.0
    lr, wd = config.optim.lr, config.optim.weight_decay
    decayed = []
    for keys, (update, param) in _first_updates(config, grad=0.0).items():
        if param.ndim >= 2 and "pos_embed" not in keys and "cls_token" not in keys:
            np.testing.assert_allclose(update, -lr * wd * param, rtol=1e-5, atol=1e-12, err_msg=str(keys))
            decayed.append(keys)
        else:
            assert not update.any(), keys
    assert ("patch_embed_mask", "proj", "kernel") in decayed and len(decayed) > 10
    with pytest.raises(ValueError, match="System.lr_layers"):
        state.make_optimizer(load_config("segtrimap.py:layerwise").optim, 10)


# -------------------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory):
    trainer = Trainer(tiny_segtrimap(data_root), tmp_path_factory.mktemp("straight"))
    initial = trainer.params()
    losses = trainer.train()
    trainer.close()
    return {"initial": initial, "losses": losses, "params": trainer.params(), "workdir": trainer.workdir}


def test_trains_with_nfl_dt_and_validates_trimaps(straight):
    terms = straight["losses"][1]
    assert {"nfl", "dt", "total"} <= set(terms)
    assert terms["total"] == pytest.approx(terms["nfl"] + 0.5 * terms["dt"], rel=1e-5)
    changed = [n for n in straight["initial"] if not np.array_equal(straight["initial"][n], straight["params"][n])]
    assert any(n.startswith("patch_embed_mask.") for n in changed) and any(n.startswith("head.") for n in changed)
    workdir = straight["workdir"]
    header = (workdir / "val.csv").read_text().splitlines()[0].split(",")
    assert {"mIoU", "IoU_unknown", "unknown_recall", "fgbg_swap_rate"} <= set(header)
    info = json.loads((workdir / "best" / "config.json").read_text())["info"]
    assert info["output"] == "trimap" and "mIoU" in info["val"]


def test_exact_resume_after_crash(data_root, straight, tmp_path):
    first = Trainer(tiny_segtrimap(data_root), tmp_path)
    losses = first.train(until=2)
    first.close()
    second = Trainer(tiny_segtrimap(data_root), tmp_path)
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
from test_train_segtrimap import tiny_segtrimap
from jaxmatte.train.loop import Trainer
assert len(jax.devices()) == 2
trainer = Trainer(tiny_segtrimap({data!r}), {workdir!r})
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
    params = dict(np.load(out))
    for name, value in straight["params"].items():
        np.testing.assert_allclose(params[name], value, atol=STEPS * 1e-3, rtol=1e-3, err_msg=name)
        assert np.mean(np.abs(params[name] - value)) < 1e-4, name


def test_exported_model_predicts_trimaps(data_root, straight, tmp_path):
    predict = load_script("predict")
    images = Path(data_root) / "val" / "image"
    if not images.is_dir():
        images = next(p for p in (Path(data_root) / "val").iterdir() if p.is_dir() and "alpha" not in p.name)
    alphas = next(p for p in (Path(data_root) / "val").iterdir() if p.is_dir() and p != images)
    out = tmp_path / "out"
    code = predict.main(
        [str(images), "--checkpoint", str(straight["workdir"]), "--mask-dir", str(alphas), "--output", str(out)]
    )
    assert code == 0
    from jaxmatte.data.io import read_image, read_mask

    for path in sorted(images.iterdir()):
        written = read_mask(out / f"{path.stem}.png")
        assert written.shape == read_image(path).shape[:2] and set(np.unique(written)) <= {0, 128, 255}
