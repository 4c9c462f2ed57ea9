"""Reliability of predict.py and evaluate.py on bad inputs (the corpus of `badinputs`): every good file is written at
its own size and orientation, every bad one is named on one line, runs end with a summary and the documented exit
status (0 all done, 1 some skipped, 2 nothing done or a usage error), output paths are checked before any work,
oversized images are refused before decoding and predict.py holds a bounded number of decoded images."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import weakref
from pathlib import Path

import cv2
import numpy as np
import pytest
from badinputs import SHAPE, Case, bomb_png, smooth, write_corpus, write_eval_corpus
from PIL import Image, ImageFile, ImageOps
from scripts import load_script
from test_predict import SIZE, tiny_tsr_model

from jaxmatte import pretrained
from jaxmatte.data import io as image_io
from jaxmatte.data.io import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, ImageReadError, read_image, read_mask

STRETCH_INFO = {
    "preprocess": {"resize_policy": "stretch", "input_size": [SIZE, SIZE], "interpolation": "cv2.INTER_LINEAR"},
    "postprocess": {"resize_to_original": "cv2.INTER_LINEAR", "quantization": "x255, truncate to uint8"},
}


@pytest.fixture(scope="module")
def predict_cli():
    return load_script("predict")


@pytest.fixture(scope="module")
def evaluate_cli():
    return load_script("evaluate")


@pytest.fixture(autouse=True)
def _pixel_limit_restored(monkeypatch):
    """`set_max_pixels` (--max-pixels, the environment variable) changes process state: put it back after each test."""
    monkeypatch.setenv(MAX_PIXELS_ENV, "0")  # recorded as absent, so the teardown removes it
    monkeypatch.delenv(MAX_PIXELS_ENV)
    monkeypatch.setattr(image_io, "_max_pixels", DEFAULT_MAX_PIXELS)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[Case]]:
    root = tmp_path_factory.mktemp("corpus")
    return root, write_corpus(root)


@pytest.fixture(scope="module")
def tsr(tmp_path_factory) -> Path:
    """A tiny TSR model with seeded random weights (as in test_predict), saved as a stretch-to-64 release."""
    config, model = tiny_tsr_model()
    return pretrained.save_pretrained(model, config, tmp_path_factory.mktemp("tsr") / "tsr", info=STRETCH_INFO)


def skipped_lines(err: str) -> list[str]:
    return [line.split("\r")[-1] for line in err.splitlines() if line.split("\r")[-1].startswith("skipped ")]


def check_run(code, captured, images: Path, out: Path, cases: list[Case], refused: dict[str, str] | None = None):
    """Good files written at their (EXIF-applied) size, one line per refused file (with its problem), the summary
    and exit status 1; returns the good cases."""
    refused = {**{case.path: case.problem for case in cases if not case.good}, **(refused or {})}
    lines = skipped_lines(captured.err)
    good = []
    for case in cases:
        mine = [line for line in lines if line.startswith(f"skipped {images / case.path}: ")]
        if case.path in refused:
            assert len(mine) == 1 and refused[case.path] in mine[0], (case.path, mine)
        else:
            assert not mine, mine
            assert read_mask(out / f"{case.stem}.png").shape == case.shape, case.path
            good.append(case)
    assert len(lines) == len(refused), lines
    assert f"wrote {len(good)} of {len(cases)} images to {out}; skipped {len(refused)}: " in captured.out
    assert "Traceback" not in captured.err
    assert not (out / "sub" / "loop").exists()  # the symlink loop is not followed
    assert code == 1
    return good


# ------------------------------------------------------------------------------------------ the corpus, every kind


def test_corpus_image_only(corpus, tsr, predict_cli, tmp_path, capsys):
    from jaxmatte.predict import Predictor

    root, cases = corpus
    images, out = root / "images", tmp_path / "out"
    code = predict_cli.main([str(images), "--recursive", "--checkpoint", str(tsr), "--output", str(out)])
    good = check_run(code, capsys.readouterr(), images, out, cases)
    # the outputs are the model's predictions of the decoded files (the first readable file of a clash wins)
    predictor = Predictor(tsr)
    pictures = [read_image(images / case.path) for case in good]
    for case, expected in zip(good, predictor.predict_arrays(pictures), strict=True):
        np.testing.assert_array_equal(read_mask(out / f"{case.stem}.png"), expected, err_msg=case.path)
    for value in range(2, 9):  # EXIF orientation as PIL applies it
        path = images / f"exif_{value}.jpg"
        np.testing.assert_array_equal(read_image(path), np.asarray(ImageOps.exif_transpose(Image.open(path))))


@pytest.fixture(scope="module")
def segtrimap(tmp_path_factory) -> Path:
    from test_segtrimap import converted, reference

    return converted(tmp_path_factory.mktemp("segtrimap"), reference(2, "x1", seed=5), "1", "segtrimap")


@pytest.fixture(scope="module")
def dim(tmp_path_factory) -> Path:
    from dim_reference import DIMModel_student, perturb_
    from test_dim import SMALL_CFG, converted

    model = perturb_(DIMModel_student(SMALL_CFG), seed=7).eval()
    return converted(tmp_path_factory.mktemp("dim"), model, "dim", legacy=False)


def test_corpus_image_and_mask(corpus, segtrimap, predict_cli, tmp_path, capsys):
    root, cases = corpus
    images, out = root / "images", tmp_path / "out"
    argv = [str(images), "--recursive", "--checkpoint", str(segtrimap), "--mask-dir", str(root / "masks")]
    code = predict_cli.main([*argv, "--output", str(out)])
    refused = {"nomask.png": "no mask named nomask.*", "badmask.png": f"mask {root / 'masks' / 'badmask.png'}: trunc"}
    good = check_run(code, capsys.readouterr(), images, out, cases, refused)
    assert all(set(np.unique(read_mask(out / f"{case.stem}.png"))) <= {0, 128, 255} for case in good)


def test_corpus_image_and_trimap(corpus, dim, predict_cli, tmp_path, capsys):
    root, cases = corpus
    images, out = root / "images", tmp_path / "out"
    argv = [str(images), "--recursive", "--checkpoint", str(dim), "--trimap-dir", str(root / "trimaps")]
    code = predict_cli.main([*argv, "--output", str(out), "--batch-size", "4"])
    refused = {
        "nomask.png": "no trimap named nomask.*",
        "badmask.png": f"trimap {root / 'trimaps' / 'badmask.png'}: trunc",
        "one_pixel.png": "1x1 is below dim_student's 32 px minimum",
    }
    check_run(code, capsys.readouterr(), images, out, cases, refused)


def test_corpus_image_mask_trimap_model_chain(corpus, segtrimap, dim, predict_cli, tmp_path, capsys):
    """--trimap-model: the 1 x 1 image below DIM's minimum is reported (it once ended the run with a traceback)."""
    root, cases = corpus
    images, out, trimaps = root / "images", tmp_path / "out", tmp_path / "trimaps"
    argv = [str(images), "--recursive", "--checkpoint", str(dim), "--trimap-model", str(segtrimap)]
    code = predict_cli.main(
        [*argv, "--mask-dir", str(root / "masks"), "--output", str(out), "--save-trimaps", str(trimaps)]
    )
    refused = {
        "nomask.png": "no mask named nomask.*",
        "badmask.png": f"mask {root / 'masks' / 'badmask.png'}: trunc",
        "one_pixel.png": "1x1 is below dim_student's 32 px minimum",
    }
    good = check_run(code, capsys.readouterr(), images, out, cases, refused)
    assert all(read_mask(trimaps / f"{case.stem}.png").shape == case.shape for case in good)


# ------------------------------------------------------------------------------------------------- known defects


def _folder(path: Path, names: list[str], seed: int = 0) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(smooth(rng, SHAPE)).save(path / name, quality=92)
    return path


def test_output_that_is_a_file_fails_before_the_model_loads(tsr, predict_cli, tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(predict_cli, "make_predictor", no_model)
    images = _folder(tmp_path / "in", ["a.png"])
    taken = tmp_path / "taken"
    taken.write_text("a file")
    base = [str(images), "--checkpoint", str(tsr)]
    for argv, message in (
        ([*base, "--output", str(taken)], f"--output {taken}: exists and is a file, not a folder"),
        ([*base, "--output", str(taken / "out")], f"--output {taken / 'out'}: cannot be created, {taken} is a file"),
        ([*base, "--output", "o", "--trimap-model", "t", "--save-trimaps", str(taken)], f"--save-trimaps {taken}"),
        ([str(tmp_path / "absent.png"), "--checkpoint", str(tsr), "--output", "o"], "absent.png: no such file"),
        ([str(tmp_path / "in" / "*.jpg"), "--checkpoint", str(tsr), "--output", "o"], "*.jpg: no such file"),
    ):
        code = predict_cli.main(argv)
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    with pytest.raises(SystemExit) as exited:
        predict_cli.main([*base, "--output", "o", "--max-pixels", "lots"])
    assert exited.value.code == 2 and "--max-pixels: expected a pixel count" in capsys.readouterr().err


def test_unwritable_output_folder(tsr, predict_cli, tmp_path, capsys):
    """A folder without write permission (root ignores the bits: there, a read-only pseudo file system); nothing is
    left behind by the check."""
    images = _folder(tmp_path / "in", ["a.png"])
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:
        locked = Path("/sys/kernel")  # root passes the permission bits there, and sysfs takes no new files
    try:
        before = sorted(locked.iterdir())
        for output in (locked / "out", locked):
            code = predict_cli.main([str(images), "--checkpoint", str(tsr), "--output", str(output)])
            err = capsys.readouterr().err
            assert code == 2 and "not writable" in err and len(err.strip().splitlines()) == 1, err
        assert sorted(locked.iterdir()) == before
    finally:
        (tmp_path / "locked").chmod(0o700)


def test_blocked_output_is_reported_and_the_run_goes_on(tsr, predict_cli, tmp_path, capsys):
    images = _folder(tmp_path / "in", ["a.png", "b.png", "c.png"])
    out = tmp_path / "out"
    (out / "b.png").mkdir(parents=True)  # a folder where b's output goes
    code = predict_cli.main([str(images), "--checkpoint", str(tsr), "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 1 and (out / "a.png").is_file() and (out / "c.png").is_file()
    assert skipped_lines(captured.err) == [f"skipped {images / 'b.png'}: cannot write {out / 'b.png'} (Is a directory)"]
    assert "wrote 2 of 3 images" in captured.out and "skipped 1: 1 output blocked" in captured.out


def test_first_readable_file_of_a_name_wins(tsr, predict_cli, tmp_path, capsys):
    from jaxmatte.predict import Predictor

    images = _folder(tmp_path / "in", ["x.png", "y.jpg", "y.png"])
    Image.fromarray(np.zeros((*SHAPE, 3), np.uint8)).save(images / "x.jpg", quality=92)
    (images / "x.jpg").write_bytes((images / "x.jpg").read_bytes()[:200])  # unreadable, sorted before x.png
    out = tmp_path / "out"
    code = predict_cli.main([str(images), "--checkpoint", str(tsr), "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 1 and "wrote 2 of 4 images" in captured.out
    lines = skipped_lines(captured.err)
    assert len(lines) == 2 and lines[0].startswith(f"skipped {images / 'x.jpg'}: truncated")
    clash = f"name clash: {out / 'y.png'} is already written from {images / 'y.jpg'}"
    assert lines[1] == f"skipped {images / 'y.png'}: {clash}"
    expected = Predictor(tsr).predict_arrays([read_image(images / "x.png"), read_image(images / "y.jpg")])
    np.testing.assert_array_equal(read_mask(out / "x.png"), expected[0])
    np.testing.assert_array_equal(read_mask(out / "y.png"), expected[1])


def test_oversized_images_are_refused_before_decoding(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())
    assert bomb.stat().st_size < 200_000

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for reader in (read_image, read_mask):
        with pytest.raises(ImageReadError, match="12000x12000 .144 Mpx. is above the pixel limit of 100 Mpx") as err:
            reader(bomb)
        assert err.value.kind == "too large"
    assert Image.MAX_IMAGE_PIXELS == image_io.max_pixels() == DEFAULT_MAX_PIXELS
    monkeypatch.undo()

    small = _folder(tmp_path / "in", ["a.png"]) / "a.png"
    with pytest.raises(ImageReadError, match="56x40 .2240 px. is above the pixel limit of 2000 px"):
        read_image(small, max_pixels=2000)
    # a file only OpenCV decodes (Radiance HDR) is checked after decoding
    radiance = tmp_path / "radiance.png"
    radiance.write_bytes(cv2.imencode(".hdr", np.full((30, 20, 3), 0.5, np.float32))[1].tobytes())
    assert read_image(radiance).shape == (30, 20, 3)
    with pytest.raises(ImageReadError, match="20x30 .600 px. is above"):
        read_image(radiance, max_pixels=599)


def test_pixel_limit_options(tsr, predict_cli, tmp_path, capsys, monkeypatch):
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(smooth(rng, SHAPE)).save(images / "big.png")  # 2240 px
    Image.fromarray(smooth(rng, (30, 40))).save(images / "small.png")  # 1200 px
    for option, env in ((["--max-pixels", "2000"], None), ([], "2_000")):
        if env is not None:
            monkeypatch.setenv(MAX_PIXELS_ENV, env)
        out = tmp_path / f"out{len(option)}"
        code = predict_cli.main([str(images), "--checkpoint", str(tsr), "--output", str(out), *option])
        captured = capsys.readouterr()
        assert code == 1 and sorted(p.name for p in out.iterdir()) == ["small.png"]
        assert skipped_lines(captured.err) == [
            f"skipped {images / 'big.png'}: 56x40 (2240 px) is above the pixel limit of 2000 px "
            f"(--max-pixels or {MAX_PIXELS_ENV})"
        ]
        assert "skipped 1: 1 too large" in captured.out
        assert Image.MAX_IMAGE_PIXELS == 2000
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    assert predict_cli.main([str(images), "--checkpoint", str(tsr), "--output", str(tmp_path / "x")]) == 2
    assert f"error: {MAX_PIXELS_ENV}: expected a pixel count" in capsys.readouterr().err


def test_predict_holds_a_bounded_number_of_decoded_images(tsr, predict_cli, tmp_path, monkeypatch):
    import jaxmatte.predict

    images = _folder(tmp_path / "in", [f"{index:02d}.png" for index in range(12)])
    events: list[str] = []
    live = {"now": 0, "most": 0}
    original_read, original_write = jaxmatte.predict.read_image, predict_cli.write_png

    def gone() -> None:
        live["now"] -= 1

    def counting_read(path, **kwargs):
        image = original_read(path, **kwargs)
        live["now"] += 1
        live["most"] = max(live["most"], live["now"])
        weakref.finalize(image, gone)
        events.append("read")
        return image

    def recording_write(path, array):
        events.append("write")
        return original_write(path, array)

    monkeypatch.setattr(jaxmatte.predict, "read_image", counting_read)
    monkeypatch.setattr(predict_cli, "write_png", recording_write)
    batch = 2
    argv = [str(images), "--checkpoint", str(tsr), "--output", str(tmp_path / "out"), "--batch-size", str(batch)]
    assert predict_cli.main([*argv, "--format", "alpha,rgba"]) == 0
    assert events.count("read") == 12 and events.count("write") == 24
    # the batch on the model, the next one read ahead, and the image being written
    assert live["most"] <= 2 * batch + 1, live
    assert events.index("write") < 2 * batch + 1  # writing starts after two batches are read, not after all


def test_an_image_the_preprocessing_refuses_is_reported(tsr, tmp_path, monkeypatch):
    from jaxmatte.predict import Predictor

    images = _folder(tmp_path / "in", ["a.png", "b.png", "c.png"])
    predictor = Predictor(tsr, batch_size=2)
    prepare = predictor.prepare
    calls = iter([prepare, ValueError("odd geometry"), prepare])

    def flaky(*args):
        step = next(calls)
        if isinstance(step, Exception):
            raise step
        return step(*args)

    monkeypatch.setattr(predictor, "prepare", flaky)
    results = list(predictor.predict_files(sorted(images.iterdir())))
    assert [type(result).__name__ for _, result in results] == ["ndarray", "ImageReadError", "ndarray"]
    assert str(results[1][1]) == f"{images / 'b.png'}: cannot be prepared for tsr (odd geometry)"


# -------------------------------------------------------------------------------------------------- CLI hygiene


def test_options_are_not_abbreviated_and_help_has_examples(predict_cli, evaluate_cli, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:  # --input was once taken as --input-size
        predict_cli.main([str(tmp_path), "--checkpoint", "c", "--output", "o", "--input", "64"])
    assert exited.value.code == 2 and "unrecognized arguments: --input 64" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        evaluate_cli.main(["--pred", str(tmp_path), "--gt-dir", str(tmp_path)])
    assert exited.value.code == 2 and "unrecognized arguments: --pred" in capsys.readouterr().err
    for cli in (predict_cli, evaluate_cli):
        with pytest.raises(SystemExit) as exited:
            cli.main(["--help"])
        text = capsys.readouterr().out
        assert exited.value.code == 0 and "examples:" in text and "exit status: 0" in text


# ------------------------------------------------------------------------------------------------------ evaluate


def _problem_lines(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.startswith("  ")]


@pytest.mark.parametrize("with_trimaps", [True, False], ids=["trimaps", "no-trimaps"])
def test_evaluate_corpus(evaluate_cli, tmp_path, capsys, with_trimaps):
    cases = write_eval_corpus(tmp_path)
    if not with_trimaps:
        cases = [dataclasses.replace(case, problem=None) if case.name == "trimap_size" else case for case in cases]
    out = tmp_path / "results.json"
    argv = ["--pred-dir", tmp_path / "pred", "--gt-dir", tmp_path / "gt", "--name", "corpus", "--json", out]
    argv += ["--workers", 1, "--worst", 3, *(["--trimap-dir", tmp_path / "trimap"] if with_trimaps else [])]
    code = evaluate_cli.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    lines = _problem_lines(captured.out)
    bad = [case for case in cases if case.problem is not None]
    for case in cases:
        mine = [line for line in lines if line.startswith(f"{case.name}: ")]
        if case.problem is None:
            assert not mine, mine
        else:
            assert len(mine) == 1 and case.problem in mine[0], (case.name, mine)
    assert len(lines) == len(bad)
    result = json.loads(out.read_text())["corpus"]
    assert result["images"] == len(cases) - len(bad) and len(result["skipped"]) == len(bad)
    metrics = {key: value for key, value in result.items() if key not in ("skipped", "matting_region", "hce_binarize")}
    assert metrics and all(value is not None and math.isfinite(value) for value in metrics.values()), metrics
    assert ("SAD" in result) == with_trimaps
    assert f"evaluated {len(cases) - len(bad)} images in corpus; skipped {len(bad)}: " in captured.out
    assert "Traceback" not in captured.err and code == 1
    assert (tmp_path / "corpus_worst.png").is_file() and (tmp_path / "corpus_per_image.csv").is_file()

    # an empty folder on either side: nothing evaluated, exit 2
    for pred, gt in ((tmp_path / "empty", tmp_path / "gt"), (tmp_path / "pred", tmp_path / "empty")):
        assert evaluate_cli.main(["--pred-dir", str(pred), "--gt-dir", str(gt), "--workers", "1"]) == 2
        assert "no image was evaluated" in capsys.readouterr().err


def test_evaluate_checks_output_paths_before_the_work(evaluate_cli, tmp_path, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the evaluation ran")

    for name in ("pair_folders", "evaluate_pairs", "evaluate_trimap_pairs", "make_predictor"):
        monkeypatch.setattr(evaluate_cli, name, no_work)
    folder = _folder(tmp_path / "masks", ["a.png"])
    taken = tmp_path / "taken"
    taken.write_text("a file")
    pairs = ["--pred-dir", folder, "--gt-dir", folder]
    model = ["--checkpoint", tmp_path, "--data", folder]
    for argv, message in (
        ([*pairs, "--out-dir", taken], f"--out-dir {taken}: exists and is a file, not a folder"),
        ([*pairs, "--json", tmp_path], f"--json {tmp_path}: exists and is a folder, not a file"),
        ([*pairs, "--csv", taken / "x.csv"], f"--csv {taken / 'x.csv'}: cannot be created, {taken} is a file"),
        ([*pairs, "--json", tmp_path / "r.json", "--worst-png", taken / "w.png"], "--worst-png"),
        ([*pairs, "--metrics", "trimap", "--out-dir", taken], f"--out-dir {taken}: exists and is a file"),
        ([*model, "--save-preds", taken], f"--save-preds {taken}: exists and is a file, not a folder"),
        ([*model, "--out-dir", taken / "sub"], f"--out-dir {taken / 'sub'}: cannot be created, {taken} is a file"),
    ):
        code = evaluate_cli.main([str(arg) for arg in argv])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
