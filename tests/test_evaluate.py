"""evaluate.py and jaxmatte.evaluation on saved-prediction folders: pairing, skipped files, reports, matting rule."""

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from scripts import load_script

from jaxmatte.data.io import read_image
from jaxmatte.evaluation import (
    SOFT_GT_FRACTION,
    GridItem,
    Record,
    default_dataset_name,
    evaluate_pairs,
    evaluate_records,
    grid_items_from_records,
    matting_applies,
    pair_folders,
    render_grid,
    soft_fraction,
    summarize,
    worst_results,
)
from jaxmatte.metrics.dis import DIS_KEYS, dis_image_row, dis_image_stats, summarize_dis
from jaxmatte.metrics.matting import MATTING_KEYS, matting_image_metrics, summarize_matting

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata" / "alphamatting_training_lowres"
REPORT_KEYS = {"images", "skipped", "matting_region", "hce_binarize"}
GT_SHAPE = (48, 64)
PRED_SHAPE = (30, 40)


@pytest.fixture(scope="module")
def cli():
    return load_script("evaluate")


def blob_mask(rng: np.random.Generator, shape=GT_SHAPE) -> np.ndarray:
    """Binary mask: a few filled ellipses and a thin line."""
    mask = np.zeros(shape, np.uint8)
    height, width = shape
    for _ in range(3):
        centre = (int(rng.integers(8, width - 8)), int(rng.integers(8, height - 8)))
        axes = (int(rng.integers(4, width // 3)), int(rng.integers(3, height // 3)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    cv2.line(mask, (2, int(rng.integers(2, height - 2))), (width - 3, int(rng.integers(2, height - 2))), 255, 1)
    return mask


def noisy_prediction(rng: np.random.Generator, gt: np.ndarray, shape) -> np.ndarray:
    blurred = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), float(rng.uniform(0.8, 2.5)))
    noisy = blurred + rng.normal(0, 25, gt.shape)
    return cv2.resize(np.clip(noisy, 0, 255).astype(np.uint8), shape[::-1], interpolation=cv2.INTER_AREA)


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def make_dis_layout(root: Path, soft: bool = False, seed: int = 0) -> dict[str, Path]:
    """DIS-TE1/{gt,im,trimap} + preds: a, b at another size, c at the GT size, d corrupt, e without prediction,
    zzz a prediction without GT. `soft` blurs the GTs (alpha-matte-like)."""
    rng = np.random.default_rng(seed)
    dataset, preds = root / "DIS-TE1", root / "preds"
    for name in "abcde":
        gt = blob_mask(rng)
        if soft:
            gt = cv2.GaussianBlur(gt, (0, 0), 2.0)
        save(dataset / "gt" / f"{name}.png", gt)
        save(dataset / "im" / f"{name}.jpg", rng.integers(0, 256, (*GT_SHAPE, 3), dtype=np.uint8))
        trimap = np.where(cv2.dilate(gt, np.ones((5, 5))) > cv2.erode(gt, np.ones((5, 5))), 128, gt)
        trimap = np.where(trimap == 128, 128, np.where(gt > 127, 255, 0)).astype(np.uint8)
        save(dataset / "trimap" / f"{name}.png", trimap)
        if name in "abc":
            save(preds / f"{name}.png", noisy_prediction(rng, gt, PRED_SHAPE if name != "c" else GT_SHAPE))
    good = save(preds / "d_tmp.png", blob_mask(rng)).read_bytes()
    (preds / "d_tmp.png").unlink()
    (preds / "d.png").write_bytes(good[: len(good) // 2])
    save(preds / "zzz.png", blob_mask(rng))
    return {"gt": dataset / "gt", "im": dataset / "im", "trimap": dataset / "trimap", "pred": preds}


def read_gray(path: Path) -> np.ndarray:
    """Masks as the DIS evaluation code reads them."""
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def direct_arrays(folders, names, with_trimap=False):
    """(pred at GT size, gt, trimap) per name, read and resized independently of jaxmatte."""
    arrays = []
    for name in names:
        gt = read_gray(folders["gt"] / f"{name}.png")
        pred = read_gray(folders["pred"] / f"{name}.png")
        if pred.shape != gt.shape:
            pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
        trimap = read_gray(folders["trimap"] / f"{name}.png") if with_trimap else None
        arrays.append((pred, gt, trimap))
    return arrays


def assert_json_numbers(result: dict, summary: dict[str, float]) -> None:
    """`result` holds `summary`'s numbers (NaN as null) up to float summation-order noise.

    NumPy's SIMD reductions round differently with the memory alignment of the buffers, so sums over the same values
    may differ in the last bits from one allocation to the next.
    """
    expected = {key: (value if math.isfinite(value) else None) for key, value in summary.items()}
    got = {key: result[key] for key in summary}
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def run_cli(cli, *args) -> int:
    return cli.main([str(arg) for arg in args])


# ------------------------------------------------------------------------------------------------------- the CLI


def test_cli_on_dis_layout(cli, tmp_path, capsys):
    folders = make_dis_layout(tmp_path)
    out = tmp_path / "results" / "metrics.json"
    args = ["--pred-dir", folders["pred"], "--gt-dir", folders["gt"], "--image-dir", folders["im"], "--json", out]
    assert run_cli(cli, *args, "--worst", 2, "--workers", 1) == 1  # d, e, zzz are skipped
    printed = capsys.readouterr().out

    header, row = printed.splitlines()[:2]
    assert header.split() == ["dataset", "images", *DIS_KEYS]
    assert row.split()[:2] == ["DIS-TE1", "3"]
    assert "d: unreadable prediction d.png: truncated" in printed
    assert "e.png: no prediction" in printed and "zzz.png: no ground truth" in printed

    data = json.loads(out.read_text())
    assert list(data) == ["DIS-TE1"]
    result = data["DIS-TE1"]
    assert [key for key in result if key not in REPORT_KEYS] == list(DIS_KEYS)  # exact names, table order
    assert result["images"] == 3 and result["matting_region"] is None and result["hce_binarize"] == "dis"
    assert {item["name"] for item in result["skipped"]} == {"d", "e.png", "zzz.png"}

    arrays = direct_arrays(folders, "abc")
    stats = [dis_image_stats(pred, gt, hce_binarize="dis") for pred, gt, _ in arrays]
    assert_json_numbers(result, summarize_dis(stats))

    with (out.parent / "DIS-TE1_per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == ["a", "b", "c"]
    assert [(int(row["pred_height"]), int(row["height"])) for row in rows] == [(30, 48), (30, 48), (48, 48)]
    for row, image_stats in zip(rows, stats, strict=True):
        expected = dis_image_row(image_stats)
        assert {key: float(row[key]) for key in expected} == pytest.approx(expected, rel=1e-12, nan_ok=True)
    assert not set(MATTING_KEYS) & set(rows[0])

    grid = read_image(out.parent / "DIS-TE1_worst.png")
    assert grid.shape[0] > grid.shape[1] / 2 and grid.std() > 10


def test_cli_out_dir_and_matting_with_trimaps(cli, tmp_path, capsys):
    folders = make_dis_layout(tmp_path, seed=1)
    out_dir = tmp_path / "out"
    args = ["--pred-dir", folders["pred"], "--gt-dir", folders["gt"], "--trimap-dir", folders["trimap"]]
    assert run_cli(cli, *args, "--out-dir", out_dir, "--workers", 1, "--hce-binarize", "pysodmetrics") == 1
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ["dataset", "images", *DIS_KEYS, "SAD", "MSE(x1e3)", "Grad", "Conn"]

    result = json.loads((out_dir / "metrics.json").read_text())["DIS-TE1"]
    assert [key for key in result if key not in REPORT_KEYS] == [*DIS_KEYS, *MATTING_KEYS]
    assert result["matting_region"] == "unknown" and result["hce_binarize"] == "pysodmetrics"
    arrays = direct_arrays(folders, "abc", with_trimap=True)
    matting = summarize_matting([matting_image_metrics(pred, gt, trimap) for pred, gt, trimap in arrays])
    assert_json_numbers(result, matting)
    stats = [dis_image_stats(pred, gt, hce_binarize="pysodmetrics") for pred, gt, _ in arrays]
    assert result["HCE"] == summarize_dis(stats)["HCE"]
    assert f"{1e3 * matting['MSE']:.3f}" in printed.splitlines()[1].split()
    assert (out_dir / "DIS-TE1_per_image.csv").exists() and (out_dir / "DIS-TE1_worst.png").exists()


def test_cli_soft_ground_truth_gets_whole_image_matting_metrics(cli, tmp_path):
    folders = make_dis_layout(tmp_path, soft=True, seed=2)
    out = tmp_path / "soft.json"
    args = ["--pred-dir", folders["pred"], "--gt-dir", folders["gt"], "--json", out, "--worst", 0, "--workers", 1]
    assert run_cli(cli, *args) == 1
    result = json.loads(out.read_text())["DIS-TE1"]
    assert result["matting_region"] == "whole"
    arrays = direct_arrays(folders, "abc")
    assert np.mean([soft_fraction(gt) for _, gt, _ in arrays]) > SOFT_GT_FRACTION
    matting = summarize_matting([matting_image_metrics(pred, gt) for pred, gt, _ in arrays])
    assert_json_numbers(result, matting)
    assert not (tmp_path / "DIS-TE1_worst.png").exists()  # --worst 0


@pytest.mark.parametrize("soft", [True, False], ids=["soft", "binary"])
def test_cli_matting_metric_set(cli, tmp_path, capsys, soft):
    """--metrics matting: MAE is the plain mean |pred - gt| / 255 (no normalisation, soft GT), then SAD .. Conn; the
    DIS block (without its MAE) only for binary GT."""
    folders = make_dis_layout(tmp_path, soft=soft, seed=3)
    out = tmp_path / "m.json"
    args = ["--pred-dir", folders["pred"], "--gt-dir", folders["gt"], "--json", out, "--worst", 0]
    assert run_cli(cli, *args, "--workers", 1, "--metrics", "matting") == 1
    header = capsys.readouterr().out.splitlines()[0].split()
    result = json.loads(out.read_text())["DIS-TE1"]
    keys = [key for key in result if key not in REPORT_KEYS | {"metrics"}]
    dis_rest = [key for key in DIS_KEYS if key != "MAE"]
    assert keys == ["MAE", *MATTING_KEYS, *([] if soft else dis_rest)]
    assert header[2:7] == ["MAE", "SAD", "MSE(x1e3)", "Grad", "Conn"] and ("maxFm" in header) != soft
    assert result["metrics"] == "matting" and result["matting_region"] == "whole"
    arrays = direct_arrays(folders, "abc")
    plain = np.mean([np.abs(pred.astype(float) - gt.astype(float)).mean() / 255 for pred, gt, _ in arrays])
    assert result["MAE"] == pytest.approx(plain, rel=1e-12)
    dis = summarize_dis([dis_image_stats(pred, gt) for pred, gt, _ in arrays])
    if soft:
        assert abs(result["MAE"] - dis["MAE"]) > 1e-2  # the DIS MAE binarises the soft GT
    assert_json_numbers(result, summarize_matting([matting_image_metrics(pred, gt) for pred, gt, _ in arrays]))
    if not soft:
        assert_json_numbers(result, {key: dis[key] for key in dis_rest})


def test_cli_process_pool_gives_the_same_numbers(cli, tmp_path):
    folders = make_dis_layout(tmp_path, seed=3)
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.json"
        args = ["--pred-dir", folders["pred"], "--gt-dir", folders["gt"], "--trimap-dir", folders["trimap"]]
        assert run_cli(cli, *args, "--json", out, "--worst", 0, "--workers", workers) == 1
        outputs[workers] = json.loads(out.read_text())
    in_process, pooled = outputs[1]["DIS-TE1"], outputs[2]["DIS-TE1"]
    assert_json_numbers(pooled, {key: in_process[key] for key in (*DIS_KEYS, *MATTING_KEYS)})
    assert {key: pooled[key] for key in REPORT_KEYS} == {key: in_process[key] for key in REPORT_KEYS}
    assert outputs[2]["DIS-TE1"]["images"] == 3


def test_cli_json_keeps_other_datasets(cli, tmp_path, capsys):
    folders = make_dis_layout(tmp_path, seed=4)
    out = tmp_path / "all.json"
    for name in ("DIS-VD", "DIS-TE1"):
        args = ["--pred-dir", folders["pred"], "--gt-dir", folders["gt"], "--json", out, "--name", name]
        assert run_cli(cli, *args, "--worst", 0, "--workers", 1) == 1
    assert sorted(json.loads(out.read_text())) == ["DIS-TE1", "DIS-VD"]
    out.write_text("[1, 2]")
    assert run_cli(cli, "--pred-dir", folders["pred"], "--gt-dir", folders["gt"], "--json", out) == 2
    assert "not a JSON object" in capsys.readouterr().err


def test_cli_exit_code_2_when_nothing_is_evaluated(cli, tmp_path, capsys):
    folders = make_dis_layout(tmp_path, seed=5)
    for name in "abc":
        (folders["pred"] / f"{name}.png").write_bytes(b"broken")
    assert run_cli(cli, "--pred-dir", folders["pred"], "--gt-dir", folders["gt"], "--workers", 1) == 2
    captured = capsys.readouterr()
    assert "no image was evaluated" in captured.err and "a: unreadable prediction a.png" in captured.out
    assert run_cli(cli, "--pred-dir", tmp_path / "absent", "--gt-dir", folders["gt"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        run_cli(cli, "--pred-dir", folders["pred"], "--gt-dir", folders["gt"], "--workers", 0)
    assert exited.value.code == 2


# ------------------------------------------------------------------------------------------------- library parts


def test_matting_decision_rule():
    assert soft_fraction(np.array([[0, 1], [254, 255]], np.uint8)) == 0.5  # 2 of 4 pixels strictly inside
    assert not matting_applies(False, [])
    assert not matting_applies(False, [0.0, 0.02])  # mean 0.01 is not above 1 %
    assert matting_applies(False, [0.0, 0.0201])
    assert matting_applies(True, [0.0])
    assert not matting_applies(True, [0.5], mode="no") and matting_applies(False, [0.0], mode="yes")
    with pytest.raises(ValueError, match="matting mode"):
        matting_applies(False, [], mode="maybe")


def test_pair_folders_reports_duplicates_and_prefers_png(tmp_path):
    folders = make_dis_layout(tmp_path, seed=6)
    save(folders["pred"] / "a.jpg", blob_mask(np.random.default_rng(0)))
    pairs, problems = pair_folders(folders["pred"], folders["gt"], folders["trimap"])
    assert [pair.name for pair in pairs] == ["a", "b", "c", "d"]
    assert pairs[0].pred.name == "a.png" and pairs[0].trimap == folders["trimap"] / "a.png"
    reasons = {problem.name: problem.reason for problem in problems}
    assert reasons == {
        "a.jpg": "duplicate stem in the prediction folder; a.png used",
        "e.png": "no prediction",
        "zzz.png": "no ground truth",
    }
    (folders["trimap"] / "b.png").unlink()
    pairs, problems = pair_folders(folders["pred"], folders["gt"], folders["trimap"])
    assert "b" not in [pair.name for pair in pairs] and ("b.png", "no trimap") in [(p.name, p.reason) for p in problems]


def test_default_dataset_name():
    assert default_dataset_name(Path("data/DIS5K/DIS-TE1/gt")) == "DIS-TE1"
    assert default_dataset_name(Path("data/alphamatting/alpha")) == "alphamatting"
    assert default_dataset_name(Path("data/DIS-TE1_masks_v2")) == "DIS-TE1_masks_v2"


def test_records_and_folders_give_the_same_report(tmp_path):
    folders = make_dis_layout(tmp_path, seed=7)
    pairs, _ = pair_folders(folders["pred"], folders["gt"], folders["trimap"])
    from_files = summarize("x", evaluate_pairs(pairs, workers=1))
    records = [
        Record(name, read_gray(folders["pred"] / f"{name}.png"), read_gray(folders["gt"] / f"{name}.png"), trimap)
        for name in "abc"
        for trimap in [read_gray(folders["trimap"] / f"{name}.png")]
    ]
    records.append(Record("bad", np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8)))
    from_memory = summarize("x", evaluate_records(records))
    assert from_memory.summary == pytest.approx(from_files.summary, rel=1e-9, abs=1e-12)
    assert list(from_memory.summary) == [*DIS_KEYS, *MATTING_KEYS] and from_memory.matting_region == "unknown"
    assert [problem.name for problem in from_memory.skipped] == ["bad"]
    assert [problem.name for problem in from_files.skipped] == ["d"]


def test_worst_results_and_grid_layout():
    rng = np.random.default_rng(8)
    gt = blob_mask(rng)
    records = [Record(f"r{i}", noisy_prediction(rng, gt, GT_SHAPE), gt) for i in range(4)]
    records.append(Record("worst", 255 - gt, gt))
    results = summarize("x", evaluate_records(records)).results
    worst = worst_results(results, 2)
    maes = sorted((result.mae for result in results), reverse=True)
    assert worst[0].name == "worst" and [result.mae for result in worst] == maes[:2]
    items = grid_items_from_records(records, worst)
    assert [item.name for item in items] == [result.name for result in worst]
    np.testing.assert_array_equal(items[0].pred, 255 - gt)

    def grid(count: int, with_image: bool):
        image = np.zeros((*GT_SHAPE, 3), np.uint8) if with_image else None
        return render_grid([GridItem(f"n{i}", 0.5, gt, 255 - gt, image) for i in range(count)], tile=64)

    widths = [grid(count, False).shape[1] for count in (1, 2, 3)]
    assert widths[2] - widths[1] == widths[1] - widths[0] > 64  # one column per image
    assert grid(2, True).shape[0] > grid(2, False).shape[0]  # the image row


# ---------------------------------------------------------------------------------------------------- real data


def test_cli_on_real_alpha_mattes(cli, tmp_path):
    if not (REALDATA / "alpha").is_dir():
        pytest.skip(f"real data not found at {REALDATA}")
    names = ["GT02", "GT05", "GT19"]
    preds = tmp_path / "preds"
    for name in names:  # a degraded alpha: blurred, quantised, at 3/4 size
        alpha = read_gray(REALDATA / "alpha" / f"{name}.png")
        blurred = cv2.GaussianBlur(alpha, (0, 0), 3.0)
        save(preds / f"{name}.png", cv2.resize(blurred, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA))
    out = tmp_path / "real.json"
    args = ["--pred-dir", preds, "--gt-dir", REALDATA / "alpha", "--trimap-dir", REALDATA / "trimap1"]
    assert run_cli(cli, *args, "--name", "alphamatting", "--json", out, "--worst", 0, "--workers", 1) == 1
    result = json.loads(out.read_text())["alphamatting"]
    assert result["images"] == 3 and result["matting_region"] == "unknown"
    assert len(result["skipped"]) == 24 and {item["reason"] for item in result["skipped"]} == {"no prediction"}
    folders = {"gt": REALDATA / "alpha", "pred": preds, "trimap": REALDATA / "trimap1"}
    arrays = direct_arrays(folders, names, with_trimap=True)
    matting = summarize_matting([matting_image_metrics(pred, gt, trimap) for pred, gt, trimap in arrays])
    assert_json_numbers(result, matting)
    stats = [dis_image_stats(pred, gt) for pred, gt, _ in arrays]
    assert_json_numbers(result, summarize_dis(stats))
