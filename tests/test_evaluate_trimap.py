"""evaluate.py trimap evaluation (SegTrimap spec §10, §11): saved trimap PNGs and a trimap model over a dataset."""

import csv
import dataclasses
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from scripts import load_script

from jaxmatte.data.transforms import ResizePolicy
from jaxmatte.data.trimaps import mask_from_alpha
from jaxmatte.metrics.trimap import COMPAT_KEYS, TRIMAP_KEYS, RowIoUCompat, TrimapMetrics, labels_to_png
from jaxmatte.trimap_evaluation import evaluate_trimap_pairs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cli():
    return load_script("evaluate")


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def blocky_labels(rng: np.random.Generator, shape) -> np.ndarray:
    """Random class map made of 4x4 blocks (so nearest resizing keeps structure)."""
    coarse = rng.integers(0, 3, (shape[0] // 4 + 1, shape[1] // 4 + 1)).astype(np.uint8)
    return np.kron(coarse, np.ones((4, 4), np.uint8))[: shape[0], : shape[1]]


def summary_of(report_json: dict, expected: dict) -> None:
    for key, value in expected.items():
        got = report_json[key]
        if math.isnan(value):
            assert got is None, key
        else:
            assert got == pytest.approx(value, rel=1e-12, abs=1e-15), key


# ------------------------------------------------------------------------------------------- saved trimaps


def make_pred_layout(root: Path):
    """GT trimaps a..e, predictions: a same size, b / c other sizes, d unreadable, e missing, zzz without GT."""
    rng = np.random.default_rng(3)
    gt_dir, pred_dir = root / "set" / "trimap", root / "preds"
    shapes = {"a": (40, 56), "b": (33, 47), "c": (61, 29), "d": (20, 20), "e": (24, 24)}
    for name, shape in shapes.items():
        gt = blocky_labels(rng, shape)
        save(gt_dir / f"{name}.png", labels_to_png(gt))
        noisy = np.where(rng.random(shape) < 0.2, rng.integers(0, 3, shape), gt).astype(np.uint8)
        if name == "a":  # a non-canonical trimap: 5 / 100 / 240
            save(pred_dir / "a.png", np.array([5, 100, 240], np.uint8)[noisy])
        elif name in "bc":
            pred = labels_to_png(noisy)
            size = (shape[1] * 2 + 1, shape[0] // 2 + 3)
            save(pred_dir / f"{name}.png", cv2.resize(pred, size, interpolation=cv2.INTER_NEAREST))
    good = save(root / "tmp.png", labels_to_png(blocky_labels(rng, (20, 20)))).read_bytes()
    (pred_dir / "d.png").write_bytes(good[: len(good) // 2])
    save(pred_dir / "zzz.png", labels_to_png(blocky_labels(rng, (10, 10))))
    return gt_dir, pred_dir


def expected_pairs(gt_dir: Path, pred_dir: Path, names, size=448) -> dict[str, float]:
    """Both blocks computed directly: cv2 nearest resize, §6.2 thresholds."""
    clean, compat = TrimapMetrics(), RowIoUCompat()
    policy = ResizePolicy("letterbox", size)

    def labels(values):
        return np.where(values >= 230, 2, np.where(values >= 15, 1, 0)).astype(np.uint8)

    for name in names:
        gt = cv2.imread(str(gt_dir / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        pred = cv2.imread(str(pred_dir / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        if pred.shape != gt.shape:
            pred = cv2.resize(pred, gt.shape[::-1], interpolation=cv2.INTER_NEAREST)
        clean.add(labels(pred), labels(gt))
        compat.add(policy.mask(labels(pred)), policy.mask(labels(gt)))
    return {**clean.summary(), **compat.summary()}


def test_pairs_match_direct_metrics(tmp_path):
    gt_dir, pred_dir = make_pred_layout(tmp_path)
    report = evaluate_trimap_pairs(pred_dir, gt_dir, name="set")
    assert report.images == 3
    reasons = {problem.name: problem.reason for problem in report.problems}
    assert "truncated" in reasons["d"] or "unreadable" in reasons["d"]
    assert reasons["e.png"] == "no prediction"
    assert reasons["zzz.png"] == "no ground truth"
    summary_of(report.as_json(), expected_pairs(gt_dir, pred_dir, "abc"))
    assert [row["name"] for row in report.rows] == ["a", "b", "c"]


def test_cli_pred_dir_writes_json_and_csv(cli, tmp_path, capsys):
    gt_dir, pred_dir = make_pred_layout(tmp_path)
    out = tmp_path / "results" / "metrics.json"
    out.parent.mkdir()
    out.write_text(json.dumps({"other": {"images": 1}}))
    args = ["--pred-dir", pred_dir, "--trimap-dir", gt_dir, "--metrics", "trimap", "--json", out, "--name", "set"]
    assert cli.main([str(a) for a in args]) == 1  # d, e, zzz are skipped
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ["dataset", "images", *TRIMAP_KEYS]
    assert "rowIoU_mean" in printed and "approximate" in printed

    data = json.loads(out.read_text())
    assert data["other"] == {"images": 1}
    entry = data["set"]
    assert entry["images"] == 3 and entry["metrics"] == "trimap" and not entry["compat_exact"]
    summary_of(entry, expected_pairs(gt_dir, pred_dir, "abc"))

    with (out.parent / "set_per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == ["a", "b", "c"]
    assert list(rows[0]) == ["name", "height", "width", *TRIMAP_KEYS]

    # nothing to evaluate -> exit status 2; GT given twice -> argument error
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["--pred-dir", str(empty), "--gt-dir", str(gt_dir), "--metrics", "trimap"]) == 2
    with pytest.raises(SystemExit):
        cli.main(
            ["--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--trimap-dir", str(gt_dir), "--metrics", "trimap"]
        )


# ------------------------------------------------------------------------------------------------ model mode


@pytest.fixture(scope="module")
def tiny_segtrimap(tmp_path_factory):
    from flax import nnx

    from jaxmatte import save_pretrained
    from jaxmatte.models.segtrimap import PRESETS, SegTrimap, SegTrimapConfig
    from jaxmatte.preprocessing import Preprocessing

    backbone = dataclasses.replace(
        PRESETS["small_224"].backbone,
        img_size=(112, 112),
        patch_size=16,
        embed_dim=32,
        num_heads=2,
        depth=2,
        window_size=7,
        global_every=2,
    )
    config = SegTrimapConfig(backbone=backbone, neck_dims=(8, 16, 32, 64), head_width=32)
    model = SegTrimap(config, rngs=nnx.Rngs(0))
    directory = tmp_path_factory.mktemp("segtrimap") / "model"
    info = {"preprocessing": Preprocessing(resize="letterbox", size=112).to_dict()}
    save_pretrained(model, config, directory, info=info)
    return directory


def make_model_root(root: Path) -> list[str]:
    """image/ + alpha/ + trimap/ with odd sizes; d's image is truncated. Returns the readable names."""
    rng = np.random.default_rng(5)
    for name, shape in {"a": (37, 53), "b": (60, 41), "c": (29, 29), "d": (30, 30)}.items():
        alpha = np.zeros(shape, np.uint8)
        cv2.ellipse(alpha, (shape[1] // 2, shape[0] // 2), (shape[1] // 3, shape[0] // 3), 0, 0, 360, 255, -1)
        alpha = cv2.GaussianBlur(alpha, (0, 0), 1.5)
        save(root / "alpha" / f"{name}.png", alpha)
        save(root / "trimap" / f"{name}.png", labels_to_png(blocky_labels(rng, shape)))
        path = save(root / "image" / f"{name}.png", rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
        if name == "d":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 3])
    return ["a", "b", "c"]


def test_cli_model_mode_matches_predictor(cli, tiny_segtrimap, tmp_path, capsys):
    from jaxmatte.data.io import read_image, read_mask
    from jaxmatte.predict import Predictor

    root = tmp_path / "ODD"
    names = make_model_root(root)
    out_dir, preds = tmp_path / "out", tmp_path / "preds"
    args = ["--checkpoint", tiny_segtrimap, "--data", root, "--out-dir", out_dir, "--save-preds", preds]
    assert cli.main([str(a) for a in [*args, "--batch-size", "2"]]) == 1  # d is skipped
    printed = capsys.readouterr().out
    assert "input masks: GT alpha >= 30" in printed and "GT labels: trimap files" in printed

    predictor = Predictor(tiny_segtrimap, batch_size=2)
    images = [read_image(root / "image" / f"{n}.png") for n in names]
    masks = [mask_from_alpha(read_mask(root / "alpha" / f"{n}.png")) for n in names]
    gts = [(read_mask(root / "trimap" / f"{n}.png") // 120).astype(np.uint8) for n in names]  # 0/128/255 -> 0/1/2
    clean, compat = TrimapMetrics(), RowIoUCompat()
    for pred, gt in zip(predictor.predict_arrays(images, masks), gts, strict=True):
        clean.add(pred, gt)
    logits = predictor.canvas_outputs([predictor.prepare(i, m) for i, m in zip(images, masks, strict=True)])
    assert logits.shape == (3, 112, 112, 3) and logits.dtype == np.float32
    for canvas, gt in zip(logits, gts, strict=True):
        compat.add(np.argmax(canvas, axis=-1), predictor.policy.mask(gt))

    entry = json.loads((out_dir / "metrics.json").read_text())["ODD"]
    assert entry["images"] == 3 and entry["compat_exact"] and entry["compat_canvas"] == "letterbox 112"
    assert [p["name"] for p in entry["skipped"]] == ["d"]
    assert entry["prediction"]["family"] == predictor.family
    summary_of(entry, {**clean.summary(), **compat.summary()})
    assert set(COMPAT_KEYS) <= set(entry)
    saved = read_mask(preds / "ODD" / "a.png")
    assert saved.shape == (37, 53) and set(np.unique(saved)) <= {0, 128, 255}


def test_model_mode_alpha_labels_and_bad_metrics(cli, tiny_segtrimap, tmp_path, capsys):
    root = tmp_path / "NOTRI"
    make_model_root(root)
    for path in (root / "trimap").iterdir():
        path.unlink()
    (root / "trimap").rmdir()
    args = ["--checkpoint", tiny_segtrimap, "--data", root, "--json", tmp_path / "m.json", "--unknown-band", "3"]
    assert cli.main([str(a) for a in args]) == 1  # d is skipped
    assert "alpha (unknown band 3 px)" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["NOTRI"]["gt_labels"] == "alpha (unknown band 3 px)"
    assert cli.main([str(a) for a in [*args, "--metrics", "dis"]]) == 2
