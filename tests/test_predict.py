"""Inference: `jaxmatte.predict.Predictor`, the `predict.py` CLI and the model mode of `evaluate.py`.

A tiny TSR model (random weights) is saved once as a converted release (stretch, truncation) and once as a training
workdir (letterbox, rounding); outputs are compared bit for bit with independent NumPy / OpenCV pipelines.
"""

import json
import logging
from pathlib import Path

import cv2
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scripts import load_script

from jaxmatte import pretrained
from jaxmatte.backbones import swin
from jaxmatte.data.io import read_image, read_mask
from jaxmatte.data.synthetic import write_synthetic_dis
from jaxmatte.metrics.dis import DIS_KEYS
from jaxmatte.models.tsr import modeling
from jaxmatte.predict import Predictor, quantize, resolve_checkpoint

REPO = Path(__file__).resolve().parents[1]
SIZE = 64  # model input side (the model resizes to its safe size inside)
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
CONVERTED_INFO = {
    "preprocess": {
        "decode": "OpenCV, BGR -> RGB, uint8",
        "resize_policy": "stretch",
        "input_size": [SIZE, SIZE],
        "interpolation": "cv2.INTER_LINEAR",
        "scale": 1 / 255,
        "mean": MEAN.tolist(),
        "std": STD.tolist(),
    },
    "postprocess": {
        "output": "refined alpha (sigmoid(coarse probability + residual))",
        "resize_to_original": "cv2.INTER_LINEAR",
        "quantization": "x255, truncate to uint8",
    },
}
TRAINED_INFO = {
    "preprocess": {
        "resize_policy": "letterbox",
        "input_size": [SIZE, SIZE],
        "mean": MEAN.tolist(),
        "std": STD.tolist(),
    },
    "postprocess": {"resize_to_original": "cv2.INTER_LINEAR", "quantization": "x255, round to nearest uint8"},
}
# name -> (height, width); every size differs from SIZE except "rgba" (exact fit: no resize either way)
SHAPES = {"colour": (37, 91), "gray": (120, 50), "rgba": (SIZE, SIZE), "palette": (33, 70), "deep": (45, 29)}


@pytest.fixture(scope="module")
def predict_cli():
    return load_script("predict")


@pytest.fixture(scope="module")
def evaluate_cli():
    return load_script("evaluate")


def tiny_tsr_model():
    """(config, model): a tiny TSR with seeded random weights (BatchNorm statistics and scales kept plausible)."""
    config = modeling.TSRConfig(
        backbone=swin.SwinConfig(window_size=7, depths=(1, 1, 1, 1), embed_dim=8, num_heads=(1, 1, 1, 1)),
        safe_size=224,
        img_size=SIZE,
        decoder_channels=(32, 16, 8),
        head_channels=(8, 8),
        refiner=modeling.RefinerConfig(mid_channels=8, num_blocks=1),
    )
    abstract = pretrained.abstract_model("tsr", config)
    rng = np.random.default_rng(0)
    values = {}
    for key, leaf in sorted(pretrained.stored_shapes(abstract).items()):
        shape = leaf.shape
        if key.endswith(".var"):
            values[key] = rng.uniform(0.5, 1.5, shape)
        elif key.endswith(".scale"):
            values[key] = 1 + 0.1 * rng.standard_normal(shape)
        elif len(shape) >= 2:
            values[key] = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
        else:
            values[key] = 0.1 * rng.standard_normal(shape)
    return config, pretrained.fill(abstract, values)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny TSR model with seeded random weights, saved in the converted-release and the training-workdir layouts."""
    config, model = tiny_tsr_model()
    root = tmp_path_factory.mktemp("checkpoints")
    converted = pretrained.save_pretrained(model, config, root / "converted", info=CONVERTED_INFO)
    workdir = root / "workdir"
    pretrained.save_pretrained(model, config, workdir / "best", info=TRAINED_INFO)
    return {"converted": converted, "workdir": workdir, "model": pretrained.load_pretrained(converted)}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder of mixed inputs: JPEG, grayscale, RGBA, palette, 16-bit PNG, a corrupt file, a nested subfolder."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(1)

    def smooth(shape, channels):
        small = rng.integers(0, 256, (max(2, shape[0] // 6), max(2, shape[1] // 6), channels), dtype=np.uint8)
        big = cv2.resize(small, shape[::-1], interpolation=cv2.INTER_CUBIC).reshape(*shape, channels)
        return np.clip(big.astype(int) + rng.integers(-20, 21, big.shape), 0, 255).astype(np.uint8)

    Image.fromarray(smooth(SHAPES["colour"], 3)).save(folder / "colour.jpg", quality=95)
    Image.fromarray(smooth(SHAPES["gray"], 1)[..., 0]).save(folder / "gray.png")
    Image.fromarray(smooth(SHAPES["rgba"], 4), mode="RGBA").save(folder / "rgba.png")
    Image.fromarray(smooth(SHAPES["palette"], 3)).quantize(16).save(folder / "palette.png")
    deep = smooth(SHAPES["deep"], 3).astype(np.uint16) * 257 + rng.integers(0, 257, (*SHAPES["deep"], 3)).astype(
        np.uint16
    )
    cv2.imwrite(str(folder / "deep.png"), deep)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    Image.fromarray(smooth((200, 33), 3)).save(folder / "sub" / "nested.png")
    return folder


def _readable(folder: Path) -> dict[str, Path]:
    """Output stem (relative, posix) -> input file, for the readable inputs."""
    files = {name: next(folder.glob(f"{name}.*")) for name in SHAPES}
    return {**files, "sub/nested": folder / "sub" / "nested.png"}


def _model_alpha(model, canvas: np.ndarray) -> np.ndarray:
    normalised = ((canvas.astype(np.float32) / np.float32(255) - MEAN) / STD).astype(np.float32)
    return np.asarray(modeling.forward(model, jnp.asarray(normalised[None])).alpha)[0, ..., 0]


def faithful_reference(model, image: np.ndarray) -> np.ndarray:
    """The released pipeline: stretch, normalise, model, INTER_LINEAR back, (p * 255).astype(uint8)."""
    height, width = image.shape[:2]
    alpha = _model_alpha(model, cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR))
    return (cv2.resize(alpha, (width, height), interpolation=cv2.INTER_LINEAR) * 255).astype(np.uint8)


def letterbox_reference(model, image: np.ndarray) -> np.ndarray:
    """Letterbox (longer side to SIZE, centred, zero padding), model, crop, INTER_LINEAR back, rounded x255."""
    height, width = image.shape[:2]
    scale = SIZE / max(height, width)
    inner_h, inner_w = round(height * scale), round(width * scale)
    top, left = (SIZE - inner_h) // 2, (SIZE - inner_w) // 2
    canvas = np.zeros((SIZE, SIZE, 3), np.uint8)
    canvas[top : top + inner_h, left : left + inner_w] = cv2.resize(image, (inner_w, inner_h))
    alpha = _model_alpha(model, canvas)[top : top + inner_h, left : left + inner_w]
    restored = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float64)
    return np.floor(restored * 255 + 0.5).astype(np.uint8)


def test_cli_faithful_pipeline_on_mixed_folder(checkpoints, inputs, predict_cli, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(inputs), "--checkpoint", str(checkpoints["converted"]), "--output", str(out), "--recursive"]
    assert predict_cli.main(argv) == 1  # broken.png is skipped
    captured = capsys.readouterr()
    assert f"skipped {inputs / 'broken.png'}: not an image" in captured.err
    assert "wrote 6 of 7 images" in captured.out and "skipped 1: 1 unreadable" in captured.out
    written = sorted(path.relative_to(out).as_posix() for path in out.rglob("*.png"))
    expected = _readable(inputs)
    assert written == sorted(f"{stem}.png" for stem in expected)
    for stem, source in expected.items():
        image = read_image(source)
        alpha = read_mask(out / f"{stem}.png")
        assert alpha.shape == image.shape[:2], stem
        np.testing.assert_array_equal(alpha, faithful_reference(checkpoints["model"], image), err_msg=stem)
        assert len(np.unique(alpha)) > 10, stem  # a real matte, not a constant

    # without --recursive the subfolder is left alone
    flat = tmp_path / "flat"
    assert predict_cli.main([str(inputs), "--checkpoint", str(checkpoints["converted"]), "--output", str(flat)]) == 1
    assert not (flat / "sub").exists() and (flat / "colour.png").is_file()


def test_letterbox_pipeline_and_workdir(checkpoints, inputs, tmp_path, caplog):
    predictor = Predictor(checkpoints["workdir"], batch_size=2)
    assert predictor.directory == checkpoints["workdir"] / "best"
    assert predictor.preprocessing.describe()["resize_policy"] == "letterbox"
    assert predictor.preprocessing.quantization == "round"
    images = [read_image(path) for path in _readable(inputs).values()]
    alphas = predictor.predict_arrays(images)
    for image, alpha in zip(images, alphas, strict=True):
        assert alpha.dtype == np.uint8 and alpha.shape == image.shape[:2]
        np.testing.assert_array_equal(alpha, letterbox_reference(checkpoints["model"], image))

    # workdir resolution: best/, else last/, else a clear error
    only_last = tmp_path / "run"
    (only_last / "last").mkdir(parents=True)
    for item in (checkpoints["workdir"] / "best").iterdir():
        (only_last / "last" / item.name).symlink_to(item)
    assert resolve_checkpoint(only_last) == only_last / "last"
    (only_last / "config.json").write_text('{"model": {}, "optim": {}}')  # a training workdir's own config
    assert resolve_checkpoint(only_last) == only_last / "last"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="best/config.json or last/config.json"):
        resolve_checkpoint(tmp_path / "empty")
    broken = tmp_path / "broken"
    (broken / "best").mkdir(parents=True)
    (broken / "best" / "config.json").symlink_to(checkpoints["workdir"] / "best" / "config.json")
    with pytest.raises(FileNotFoundError, match=r"broken/best/params: missing \(config.json is there"):
        resolve_checkpoint(broken)
    (broken / "last").symlink_to(only_last / "last")  # a damaged best/ beside a good last/: used, and said
    with caplog.at_level(logging.WARNING, logger="jaxmatte.predict"):
        assert resolve_checkpoint(broken) == broken / "last"
    assert [record.getMessage() for record in caplog.records] == [
        f"{broken / 'best' / 'params'}: missing (config.json is there, the parameters are not); the save or "
        f"copy did not finish; using {broken / 'last'} instead"
    ]

    # overrides: the converted release run with the letterbox geometry and rounding gives the letterbox pipeline
    overridden = Predictor(checkpoints["converted"], resize_policy="letterbox", quantization="round")
    np.testing.assert_array_equal(overridden.predict_arrays(images[:1])[0], alphas[0])


def test_file_api_reports_unreadable_files(checkpoints, inputs):
    predictor = Predictor(checkpoints["converted"], batch_size=2)
    paths = [inputs / "broken.png", inputs / "colour.jpg", inputs / "missing.png", inputs / "gray.png"]
    results = list(predictor.predict_files(paths))
    assert [path for path, _ in results] == paths
    assert "not an image" in str(results[0][1]) and "not found" in str(results[2][1])
    assert results[1][1].shape == SHAPES["colour"] and results[3][1].shape == SHAPES["gray"]

    # bf16 compute (fp32 parameters) stays close to fp32
    half = Predictor(checkpoints["converted"], dtype=jnp.bfloat16, batch_size=2)
    for (_, reference), (_, alpha) in zip(results, half.predict_files(paths), strict=True):
        if isinstance(reference, np.ndarray):
            difference = np.abs(alpha.astype(int) - reference).max()
            print(f"bf16 vs fp32: max |diff| {difference} / 255")
            assert difference <= 0.03 * reference.max()


def test_batch_size_invariance_and_formats(checkpoints, inputs, predict_cli, tmp_path, capsys):
    outputs = {}
    for batch in (1, 3):
        out = tmp_path / f"batch{batch}"
        argv = [str(inputs), "--recursive", "--checkpoint", str(checkpoints["converted"]), "--output", str(out)]
        argv += ["--batch-size", str(batch), "--format", "alpha,rgba,composite", "--background", "0,128,255"]
        argv += ["--foreground", "none"]  # the image's own colours (the estimated ones: tests/test_foreground.py)
        assert predict_cli.main(argv) == 1
        outputs[batch] = {path.relative_to(out): path.read_bytes() for path in sorted(out.rglob("*.png"))}
    assert len(outputs[1]) == 3 * 6 and outputs[1] == outputs[3]

    out = tmp_path / "batch3"
    for stem, source in _readable(inputs).items():
        image, alpha = read_image(source), read_mask(out / f"{stem}.png")
        rgba = np.asarray(Image.open(out / f"{stem}_rgba.png"))
        assert rgba.shape == (*alpha.shape, 4)
        np.testing.assert_array_equal(rgba[..., :3], image)
        np.testing.assert_array_equal(rgba[..., 3], alpha)
        composite = np.asarray(Image.open(out / f"{stem}_composite.png"))
        weight = alpha.astype(np.float64)[..., None] / 255
        expected = image * weight + np.array([0, 128, 255]) * (1 - weight)
        assert composite.shape == image.shape and np.abs(composite - expected).max() <= 0.5 + 1e-3

    # a glob input (nothing skipped: 0); nothing readable -> exit code 2
    assert predict_cli.main([str(inputs / "g*.png"), "--checkpoint", str(checkpoints["converted"]), "--output",
                             str(tmp_path / "glob")]) == 0  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "glob").iterdir()) == ["gray.png"]
    capsys.readouterr()
    bad = [str(inputs / "broken.png"), "--checkpoint", str(checkpoints["converted"]), "--output", str(tmp_path / "x")]
    assert predict_cli.main(bad) == 2
    assert "wrote 0 of 1" in capsys.readouterr().out
    assert predict_cli.main([str(inputs / "nothing*.png"), "--checkpoint", str(tmp_path), "--output", "x"]) == 2


def test_quantize_truncate_matches_float32_product():
    values = np.random.default_rng(2).random(100_000, dtype=np.float32)
    values[:3] = [0.0, 1.0, 0.5]
    np.testing.assert_array_equal(quantize(values, "truncate"), (values * 255).astype(np.uint8))
    np.testing.assert_array_equal(quantize(values, "round"), np.floor(values.astype(np.float64) * 255 + 0.5))


def test_evaluate_model_mode(checkpoints, evaluate_cli, tmp_path, capsys):
    root = write_synthetic_dis(tmp_path / "DIS5K", splits={"DIS-TE1": 3, "DIS-TE2": 2}, size_range=((40, 60), (50, 80)))
    (root / "DIS-TE1" / "im" / "zz_broken.jpg").write_bytes(b"junk")
    (root / "DIS-TE1" / "gt" / "zz_broken.png").write_bytes(b"junk")
    results, preds = tmp_path / "results.json", tmp_path / "preds"
    argv = ["--checkpoint", checkpoints["converted"], "--data", root / "DIS-TE1", "--data", root / "DIS-TE2"]
    argv += ["--json", results, "--save-preds", preds, "--batch-size", 2, "--worst", 2]
    assert evaluate_cli.main([str(arg) for arg in argv]) == 1  # zz_broken is skipped
    data = json.loads(results.read_text())
    assert sorted(data) == ["DIS-TE1", "DIS-TE2"]
    for name, count in (("DIS-TE1", 3), ("DIS-TE2", 2)):
        report = data[name]
        assert set(DIS_KEYS) <= set(report) and report["images"] == count
        assert {"skipped", "matting_region", "hce_binarize"} <= set(report)
        assert report["prediction"]["resize_policy"] == "stretch" and report["prediction"]["quantization"] == "truncate"
        for gt_path in (root / name / "gt").glob("[!z]*.png"):
            assert read_mask(preds / name / gt_path.name).shape == read_mask(gt_path).shape
    assert [item["name"] for item in data["DIS-TE1"]["skipped"]] == ["zz_broken"]
    for name in data:  # per-image CSV and worst-images grid beside the JSON
        assert len((tmp_path / f"{name}_per_image.csv").read_text().splitlines()) == 1 + data[name]["images"]
        assert read_image(tmp_path / f"{name}_worst.png").shape[1] > 2 * 192

    # the same numbers as scoring the saved predictions
    saved = tmp_path / "saved.json"
    argv = ["--pred-dir", preds / "DIS-TE1", "--gt-dir", root / "DIS-TE1" / "gt", "--json", saved, "--workers", 1]
    capsys.readouterr()
    assert evaluate_cli.main([str(arg) for arg in argv]) == 1  # zz_broken has no prediction
    from_files = json.loads(saved.read_text())["DIS-TE1"]
    for key in DIS_KEYS:
        assert from_files[key] == pytest.approx(data["DIS-TE1"][key], rel=1e-12, abs=1e-12), key

    # --config sets the geometry; the model mode needs --checkpoint and --data together
    config_file = tmp_path / "experiment.py"
    config_file.write_text('def get_config():\n    return {"data": {"policy": "letterbox", "size": 64}}\n')
    argv = ["--checkpoint", checkpoints["converted"], "--data", root / "DIS-TE2", "--config", config_file, "--json"]
    assert evaluate_cli.main([str(arg) for arg in [*argv, tmp_path / "lb.json"]]) == 0
    assert json.loads((tmp_path / "lb.json").read_text())["DIS-TE2"]["prediction"]["resize_policy"] == "letterbox"
    with pytest.raises(SystemExit) as exited:
        evaluate_cli.main(["--data", str(root / "DIS-TE2")])
    assert exited.value.code == 2
