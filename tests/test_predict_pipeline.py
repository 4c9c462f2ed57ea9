"""Threaded reading in `Predictor.predict_files` / predict.py (`read_threads`, `--read-threads`): the same results,
errors and order as reading in the calling thread, a bounded number of decoded images, reads that really run side
by side, one compiled shape per batch geometry, and no thread left behind."""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
from badinputs import SHAPE, smooth, write_corpus
from PIL import Image
from scripts import load_script
from test_predict import SIZE, tiny_tsr_model

import jaxmatte.predict
from jaxmatte import pretrained
from jaxmatte.data.io import ImageReadError, read_image
from jaxmatte.predict import Predictor

REPO = Path(__file__).resolve().parents[1]
STRETCH_INFO = {
    "preprocess": {"resize_policy": "stretch", "input_size": [SIZE, SIZE], "interpolation": "cv2.INTER_LINEAR"},
    "postprocess": {"resize_to_original": "cv2.INTER_LINEAR", "quantization": "x255, truncate to uint8"},
}
THREAD_PREFIX = "jaxmatte-read"


@pytest.fixture(scope="module")
def predict_cli():
    return load_script("predict")


@pytest.fixture(scope="module")
def tsr(tmp_path_factory) -> Path:
    config, model = tiny_tsr_model()
    return pretrained.save_pretrained(model, config, tmp_path_factory.mktemp("tsr") / "tsr", info=STRETCH_INFO)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The bad-input corpus's images: good files of many formats and every kind of broken one."""
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root)
    return root / "images"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> list[Path]:
    """Eleven paths of several sizes with unreadable and missing files among them (three batches of 4)."""
    folder = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(3)
    paths = []
    for index, shape in enumerate([(40, 56), (70, 33), (64, 64), (25, 90), (48, 48), (90, 61), (33, 33)]):
        Image.fromarray(smooth(rng, shape)).save(folder / f"{index}.png")
        paths.append(folder / f"{index}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (folder / "cut.png").write_bytes((folder / "1.png").read_bytes()[:200])
    missing = folder / "missing.png"
    return [paths[0], folder / "broken.jpg", *paths[1:4], missing, folder / "cut.png", *paths[4:]]


def _outcomes(predictor: Predictor, paths: list[Path], **options) -> list[tuple]:
    """(path, 'error', message, kind) or (path, result bytes, dtype, shape, image bytes) per result."""
    rows = []
    for path, result, *image in predictor.predict_files(paths, **options):
        if isinstance(result, ImageReadError):
            rows.append((path, "error", str(result), result.kind))
        else:
            rows.append((path, result.tobytes(), result.dtype, result.shape, image[0].tobytes() if image else None))
    return rows


def _read_threads_alive() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith(THREAD_PREFIX)]


def test_threads_give_the_sequential_results_in_order(tsr, mixed):
    sequential = Predictor(tsr, batch_size=4)
    threaded = Predictor(tsr, batch_size=4, read_threads=3)
    for options in ({"with_images": True}, {"floats": True}):
        expected = _outcomes(sequential, mixed, **options)
        assert [row[0] for row in expected] == mixed
        assert [row[1] == "error" for row in expected] == [p.stem in ("broken", "missing", "cut") for p in mixed]
        assert _outcomes(threaded, mixed, **options) == expected, options
    assert not _read_threads_alive()
    with pytest.raises(ValueError, match="read_threads must be >= 0"):
        Predictor(tsr, read_threads=-1)


def test_one_compiled_shape_per_geometry(tsr, mixed, monkeypatch):
    """Fixed-size policies pad the last batch (one input shape for the run); `native` runs one shape per canvas."""
    shapes: list[tuple[int, ...]] = []
    original = jaxmatte.predict._infer

    def recording_infer(graphdef, state, *inputs):
        shapes.append(inputs[0].shape)
        return original(graphdef, state, *inputs)

    monkeypatch.setattr(jaxmatte.predict, "_infer", recording_infer)
    readable = [path for path in mixed if path.stem.isdigit()]  # 7 images: batches of 4 and 3
    stretched = Predictor(tsr, batch_size=4, read_threads=2)
    assert all(isinstance(result, np.ndarray) for _, result in stretched.predict_files(readable))
    assert shapes == [(4, SIZE, SIZE, 3)] * 2

    shapes.clear()
    few = readable[:3]  # canvases 64 x 64 (twice) and 128 x 64 (70 x 33 px)
    native = Predictor(tsr, batch_size=4, read_threads=2, resize_policy="native", input_size=SIZE)
    canvases = {native.prepare(read_image(path))[0][0].shape for path in few}
    results = list(native.predict_files(few))
    assert len(canvases) == 2 and sorted(shapes) == sorted((4, *canvas) for canvas in canvases)
    sequential = Predictor(tsr, batch_size=4, resize_policy="native", input_size=SIZE)
    for (_, threaded_result), (_, expected) in zip(results, sequential.predict_files(few), strict=True):
        np.testing.assert_array_equal(threaded_result, expected)


def test_cli_reports_the_same_errors_and_writes_the_same_bytes(tsr, corpus, predict_cli, tmp_path, capsys):
    runs = {}
    for threads in (0, 3):
        out = tmp_path / f"threads{threads}"
        argv = [str(corpus), "--recursive", "--checkpoint", str(tsr), "--output", str(out), "--batch-size", "4"]
        code = predict_cli.main([*argv, "--format", "alpha,composite", "--read-threads", str(threads)])
        captured = capsys.readouterr()
        lines = [line.split("\r")[-1].replace(str(out), "OUT") for line in captured.err.splitlines()]
        files = {path.relative_to(out): path.read_bytes() for path in sorted(out.rglob("*.png")) if path.is_file()}
        skipped = [line for line in lines if line.startswith("skipped ")]
        runs[threads] = (code, skipped, captured.out.splitlines()[-1].replace(str(out), "OUT"), files)
    code, skipped, summary, files = runs[0]
    assert code == 1 and len(skipped) >= 10 and len(files) > 20  # the corpus has many good and many bad files
    assert runs[3][:3] == (code, skipped, summary)
    assert runs[3][3] == files
    with pytest.raises(SystemExit) as exited:
        predict_cli.main([str(corpus), "--checkpoint", str(tsr), "--output", str(tmp_path / "x"), "--read-threads"])
    assert exited.value.code == 2


def test_threads_read_side_by_side_within_two_batches(tsr, predict_cli, tmp_path, monkeypatch):
    """The reads run in the pool, two at once at least (a barrier only two concurrent reads pass), and at most two
    batches of decoded images (plus the one being written) are alive; writing starts before everything is read."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for index in range(14):
        Image.fromarray(smooth(rng, SHAPE)).save(folder / f"{index:02d}.png")
    original_read, original_write = jaxmatte.predict.read_image, predict_cli.write_png
    both_reading = threading.Barrier(2, timeout=30)
    lock = threading.RLock()
    live = {"now": 0, "most": 0}
    events: list[str] = []
    threads: set[str] = set()

    def gone() -> None:
        with lock:
            live["now"] -= 1

    def counting_read(path, **kwargs):
        threads.add(threading.current_thread().name)
        if Path(path).stem in ("00", "01"):
            both_reading.wait()  # BrokenBarrierError unless the first two reads overlap
        image = original_read(path, **kwargs)
        with lock:
            live["now"] += 1
            live["most"] = max(live["most"], live["now"])
            events.append("read")
        weakref.finalize(image, gone)
        return image

    def recording_write(path, array):
        with lock:
            events.append("write")
        return original_write(path, array)

    monkeypatch.setattr(jaxmatte.predict, "read_image", counting_read)
    monkeypatch.setattr(predict_cli, "write_png", recording_write)
    batch = 4
    argv = [str(folder), "--checkpoint", str(tsr), "--output", str(tmp_path / "out"), "--batch-size", str(batch)]
    assert predict_cli.main([*argv, "--format", "alpha,rgba", "--read-threads", "4"]) == 0
    assert events.count("read") == 14 and events.count("write") == 28
    assert threads and all(name.startswith(THREAD_PREFIX) for name in threads), threads
    assert live["most"] <= 2 * batch + 1, live
    assert events.index("write") <= 2 * batch  # at most two batches are read before the first write
    assert not _read_threads_alive()


def test_abandoned_or_failing_runs_leave_no_threads(tsr, mixed, monkeypatch):
    readable = [path for path in mixed if path.stem.isdigit()]
    predictor = Predictor(tsr, batch_size=4, read_threads=3)
    results = predictor.predict_files(readable)
    first_path, first = next(results)
    assert first_path == readable[0] and isinstance(first, np.ndarray)
    results.close()  # the consumer stops early: the pool is shut down
    assert not _read_threads_alive()

    original_read = jaxmatte.predict.read_image

    def failing_read(path, **kwargs):
        if Path(path) == readable[4]:
            raise RuntimeError("disk on fire")
        return original_read(path, **kwargs)

    monkeypatch.setattr(jaxmatte.predict, "read_image", failing_read)
    with pytest.raises(RuntimeError, match="disk on fire"):  # not an ImageReadError: raised, as without threads
        list(predictor.predict_files(readable))
    assert not _read_threads_alive()
