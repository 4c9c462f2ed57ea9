"""evaluate.py model mode for DIM (trimap input): trimaps from the root or --trimap-dir, Composition-1k metrics on the
8-bit predictions and DCP's numbers on the float ones, checked against the PyTorch reference model."""

import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from jaxmatte import save_pretrained
from jaxmatte.metrics.compat import COMPAT_KEYS, dcp_image_metrics
from jaxmatte.metrics.matting import MATTING_KEYS, matting_image_metrics
from jaxmatte.predict import Predictor, quantize

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dim_reference as ref  # noqa: E402
from scripts import load_script

from port.dim import convert_state_dict  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"a": (37, 45), "b": (35, 51), "c": (41, 33)}  # DIM needs >= 32 px per side
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
DCP_KEYS = COMPAT_KEYS["DCP"]
OFFICIAL_KEYS = tuple(MATTING_KEYS)  # SAD, MSE, Grad, Conn


@pytest.fixture(scope="module")
def cli():
    return load_script("evaluate")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(torch reference student, its converted directory)."""
    torch.manual_seed(0)
    student = ref.DIMModel_student((8,) * 17 + (1,))
    ref.perturb_(student, 0)
    student.eval()
    converted = convert_state_dict({k: v.numpy() for k, v in student.state_dict().items()})
    directory = tmp_path_factory.mktemp("dim") / "student"
    save_pretrained(converted.model, converted.config, directory, info={"kind": "dim", **converted.info})
    return student, directory


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def random_trimap(rng: np.random.Generator, shape) -> np.ndarray:
    """0 / 128 / 255 in 4x4 blocks, at least some of each."""
    coarse = rng.choice(np.array([0, 128, 255], np.uint8), (shape[0] // 4 + 1, shape[1] // 4 + 1), p=[0.3, 0.4, 0.3])
    return np.kron(coarse, np.ones((4, 4), np.uint8))[: shape[0], : shape[1]]


def make_root(root: Path, seed: int, trimaps: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """ROOT/image, ROOT/alpha [, ROOT/trimap]: random images (odd sizes), soft alphas, blocky trimaps."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in SHAPES.items():
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        alpha = cv2.GaussianBlur(rng.integers(0, 256, shape, dtype=np.uint8), (0, 0), 1.5)
        alpha[: shape[0] // 4] = 0
        alpha[-shape[0] // 4 :] = 255
        trimap = random_trimap(rng, shape)
        save(root / "image" / f"{name}.png", image[..., ::-1])
        save(root / "alpha" / f"{name}.png", alpha)
        if trimaps:
            save(root / "trimap" / f"{name}.png", trimap)
        arrays[name] = {"image": image, "alpha": alpha, "trimap": trimap}
    return arrays


def reference(student, image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """The torch model's float32 alpha (ImageNet-normalised RGB / 255 + trimap / 255, NCHW), known regions forced."""
    rgb = (image.astype(np.float32) / np.float32(255) - MEAN) / STD
    x = np.concatenate([rgb, (trimap.astype(np.float32) / np.float32(255))[..., None]], axis=-1)
    with torch.no_grad():
        _, alpha = student(torch.from_numpy(x.transpose(2, 0, 1)[None].copy()))
    alpha = alpha[0].numpy().astype(np.float32)
    alpha[trimap == 0] = 0.0
    alpha[trimap == 255] = 1.0
    return alpha


def expected_numbers(student, arrays, names) -> dict[str, dict[str, float]]:
    """Per image: official metrics of the rounded uint8 prediction and DCP's of the float one."""
    rows = {}
    for name in names:
        item = arrays[name]
        alpha = reference(student, item["image"], item["trimap"])
        official = matting_image_metrics(quantize(alpha, "round"), item["alpha"], item["trimap"])
        rows[name] = {
            **{key: official[key] for key in OFFICIAL_KEYS},
            **dcp_image_metrics(alpha, item["alpha"], item["trimap"]),
        }
    return rows


def check_against(report: dict, per_image: list[dict], expected: dict[str, dict[str, float]]) -> None:
    assert sorted(row["name"] for row in per_image) == sorted(expected)
    for row in per_image:
        for key in (*OFFICIAL_KEYS, *DCP_KEYS):
            assert float(row[key]) == pytest.approx(expected[row["name"]][key], rel=1e-4, abs=1e-9), (row["name"], key)
    for key in (*OFFICIAL_KEYS, *DCP_KEYS):
        mean = float(np.mean([values[key] for values in expected.values()]))
        assert report[key] == pytest.approx(mean, rel=1e-4, abs=1e-9), key


def read_outputs(out: Path, name: str) -> tuple[dict, list[dict]]:
    report = json.loads((out / "metrics.json").read_text())[name]
    with (out / f"{name}_per_image.csv").open() as handle:
        return report, list(csv.DictReader(handle))


def test_float_predictions_quantize_to_the_uint8_ones(model, tmp_path):
    student, directory = model
    arrays = make_root(tmp_path / "set", seed=1)
    predictor = Predictor(directory)
    paths = [tmp_path / "set" / "image" / f"{name}.png" for name in SHAPES]
    trimaps = [tmp_path / "set" / "trimap" / f"{name}.png" for name in SHAPES]
    floats = [alpha for _, alpha in predictor.predict_files(paths, masks=trimaps, floats=True)]
    uint8 = [alpha for _, alpha in predictor.predict_files(paths, masks=trimaps)]
    for name, value, rounded in zip(SHAPES, floats, uint8, strict=True):
        assert value.dtype == np.float32 and value.shape == SHAPES[name]
        np.testing.assert_array_equal(quantize(value, "round"), rounded)
        expected = reference(student, arrays[name]["image"], arrays[name]["trimap"])
        np.testing.assert_allclose(value, expected, atol=1e-5)
    assert predictor.predict_arrays([arrays["a"]["image"]], [arrays["a"]["trimap"]], floats=True)[0].dtype == np.float32


def test_cli_reports_official_and_dcp_metrics(model, cli, tmp_path, capsys):
    student, directory = model
    root = tmp_path / "Comp1k"
    arrays = make_root(root, seed=2)
    (root / "trimap" / "c.png").unlink()  # reported and skipped
    out = tmp_path / "out"
    argv = ["--checkpoint", str(directory), "--data", str(root), "--out-dir", str(out), "--save-preds", str(out)]
    assert cli.main(argv) == 1  # c.png is skipped
    printed = capsys.readouterr().out
    assert all(key in printed for key in DCP_KEYS) and "DCP_*: DCP test.py" in printed
    assert "unknown (trimap == 128)" in printed

    report, per_image = read_outputs(out, "Comp1k")
    assert report["metrics"] == "matting" and report["matting_region"] == "unknown" and report["images"] == 2
    assert list(report)[: 5 + len(DCP_KEYS)][-len(DCP_KEYS) :] == list(DCP_KEYS)  # after MAE, SAD, MSE, Grad, Conn
    assert report["skipped"] == [{"name": "c.png", "reason": f"image without a trimap in {root / 'trimap'}"}]
    assert list(per_image[0])[-len(DCP_KEYS) :] == list(DCP_KEYS)
    check_against(report, per_image, expected_numbers(student, arrays, ["a", "b"]))
    for name in ("a", "b"):  # the saved PNGs are the rounded float predictions
        saved = cv2.imread(str(out / "Comp1k" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        expected = quantize(reference(student, arrays[name]["image"], arrays[name]["trimap"]), "round")
        assert np.count_nonzero(saved.astype(int) != expected) <= 2 and np.abs(saved.astype(int) - expected).max() <= 1


def test_cli_trimap_dir_overrides_the_roots_trimaps(model, cli, tmp_path):
    student, directory = model
    root = tmp_path / "set"
    arrays = make_root(root, seed=3)
    (root / "trimap" / "b.png").unlink()  # the root's folder is not consulted with --trimap-dir
    rng = np.random.default_rng(30)
    others = tmp_path / "other_trimaps"
    for name, shape in SHAPES.items():
        arrays[name]["trimap"] = random_trimap(rng, shape)
        save(others / f"{name}.png", arrays[name]["trimap"])
    out = tmp_path / "out"
    argv = ["--checkpoint", str(directory), "--data", str(root), "--trimap-dir", str(others), "--out-dir", str(out)]
    assert cli.main([*argv, "--worst", "0"]) == 0
    report, per_image = read_outputs(out, "set")
    assert report["images"] == 3 and report["skipped"] == []
    check_against(report, per_image, expected_numbers(student, arrays, list(SHAPES)))


def test_cli_root_without_trimaps_is_an_error(model, cli, tmp_path, capsys):
    _, directory = model
    root = tmp_path / "bare"
    make_root(root, seed=4, trimaps=False)
    assert cli.main(["--checkpoint", str(directory), "--data", str(root), "--worst", "0"]) == 2
    error = capsys.readouterr().err
    assert "no trimaps for dim_student" in error and "--trimap-dir" in error
