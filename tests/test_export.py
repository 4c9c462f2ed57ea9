"""port/export.py and jaxmatte.exported: the exported forward pass gives the live model's outputs (fixed and symbolic
batch, symbolic height / width for native-size models), the loader reproduces `Predictor.predict_arrays` without
jaxmatte's model code, and damaged or foreign files give one line."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from test_predict import tiny_tsr_model

from jaxmatte import pretrained
from jaxmatte.exported import ExportFileError, load_exported, read_header
from jaxmatte.models.dim.modeling import DIM, DIMConfig
from jaxmatte.models.segtrimap.modeling import PRESETS as SEGTRIMAP_PRESETS
from jaxmatte.predict import Predictor
from jaxmatte.preprocessing import Preprocessing
from port import export

REPO = Path(__file__).resolve().parents[1]
DIM_WIDTHS = (8, 6, 8, 7, 8, 8, 5, 8, 8, 9, 8, 8, 7, 9, 5, 7, 6, 1)  # a pruned student's widths (as test_dim)
SHAPES = ((45, 61), (70, 33), (64, 96))  # (H, W): odd, tall, even
RECORDS = {  # what each family's converter records (port/tsr.py faithful release, port/segtrimap.py, port/dim.py)
    "tsr": Preprocessing(resize="stretch", size=64, quantization="truncate"),
    "segtrimap": Preprocessing(resize="letterbox", size=56),
    "dim": Preprocessing(resize="native", size=1),
}


def random_model(family: str, config):
    """`family`'s model with seeded random weights (BatchNorm statistics and scales kept plausible)."""
    abstract = pretrained.abstract_model(family, config)
    rng = np.random.default_rng(3)
    values = {}
    for key, leaf in sorted(pretrained.stored_shapes(abstract).items()):
        if key.endswith(".var"):
            values[key] = rng.uniform(0.5, 1.5, leaf.shape)
        elif key.endswith(".scale"):
            values[key] = 1 + 0.1 * rng.standard_normal(leaf.shape)
        elif len(leaf.shape) >= 2:
            values[key] = rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        else:
            values[key] = 0.1 * rng.standard_normal(leaf.shape)
    return pretrained.fill(abstract, values)


def tiny_segtrimap_config():
    base = SEGTRIMAP_PRESETS["small_224"]
    backbone = dataclasses.replace(
        base.backbone,
        img_size=(56, 56),
        patch_size=14,
        embed_dim=32,
        depth=2,
        num_heads=2,
        window_size=2,
        global_every=2,
    )
    return dataclasses.replace(base, backbone=backbone, neck_dims=(8, 8, 16, 16), head_width=16, upsample="x1")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    tsr_config, tsr = tiny_tsr_model()
    segtrimap_config, dim_config = tiny_segtrimap_config(), DIMConfig(widths=DIM_WIDTHS)
    built = {
        "tsr": (tsr, tsr_config),
        "segtrimap": (random_model("segtrimap", segtrimap_config), segtrimap_config),
        "dim": (random_model("dim", dim_config), dim_config),
    }
    return {
        name: pretrained.save_pretrained(model, config, root / name, info={"preprocessing": RECORDS[name].to_dict()})
        for name, (model, config) in built.items()
    }


def run_export(directory: Path, out: Path, *options: str) -> Path:
    assert export.main([str(directory), "--out", str(out), *options]) == 0
    return out


@pytest.fixture(scope="module")
def exports(models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {
        "tsr_b2": run_export(models["tsr"], root / "tsr_b2.jax", "--batch", "2"),
        "tsr_dynamic": run_export(models["tsr"], root / "tsr_dynamic.jax", "--batch", "dynamic"),
        "segtrimap_b2": run_export(models["segtrimap"], root / "segtrimap_b2.jax", "--batch", "2"),
        "dim_dynamic": run_export(models["dim"], root / "dim_dynamic.jax", "--batch", "dynamic"),
    }


@pytest.fixture(scope="module")
def loaded(exports) -> dict:
    """The exports, loaded once (each keeps its compiled forward passes across the tests)."""
    return {name: load_exported(path) for name, path in exports.items()}


def images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in SHAPES]


def trimaps(seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice(np.array([0, 128, 255], np.uint8), shape) for shape in SHAPES]


def masks(seed: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.where(rng.random(shape) > 0.5, 255, 0).astype(np.uint8) for shape in SHAPES]


def stacked(prepared, indices) -> list[np.ndarray]:
    """The batch arrays (one per input) of the prepared inputs at `indices`."""
    return [np.stack(column) for column in zip(*(prepared[i][0] for i in indices), strict=True)]


def test_fixed_batch_matches_the_live_model(models, exports, loaded):
    model = loaded["tsr_b2"]
    header, _ = read_header(exports["tsr_b2"])
    assert (model.family, model.output, model.batch, model.companion) == ("tsr", "alpha", 2, None)
    assert header["inputs"][0]["shape"] == [2, 64, 64, 3] and header["result"]["shape"] == [2, 64, 64, 1]
    assert model.preprocessing == RECORDS["tsr"] and set(model.platforms) == {"cpu", "cuda"}

    predictor = Predictor(models["tsr"], batch_size=2)
    prepared = [predictor.prepare(image) for image in images()]
    expected = predictor.canvas_outputs(prepared)  # (3, 64, 64, 1): batches [0, 1] and [2, 2 (padding)]
    got = np.concatenate([model(*stacked(prepared, [0, 1])), model(*stacked(prepared, [2, 2]))[:1]])
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match=r"expected image \(2, 64, 64, 3\) float32, got image of shape \(3, 64"):
        model(*stacked(prepared, [0, 1, 2]))


def test_symbolic_batch_runs_at_two_batch_sizes(models, loaded):
    model = loaded["tsr_dynamic"]
    assert model.batch is None and model.inputs[0].shape == ("b", 64, 64, 3)
    prepared = [Predictor(models["tsr"]).prepare(image) for image in images()]
    for indices in ([1], [0, 2]):
        live = Predictor(models["tsr"], batch_size=len(indices))
        expected = live.canvas_outputs([prepared[i] for i in indices])
        np.testing.assert_array_equal(model(*stacked(prepared, indices)), expected)


def test_companion_input_with_symbolic_batch_height_and_width(models, loaded):
    """DIM (image + trimap, each image at its own size): one export runs every batch size and canvas size."""
    model = loaded["dim_dynamic"]
    assert model.companion == "trimap" and model.min_side == 32
    assert [spec.shape for spec in model.inputs] == [("b", "h", "w", 3), ("b", "h", "w", 1)]
    predictor = Predictor(models["dim"], batch_size=2)
    prepared = [predictor.prepare(image, trimap) for image, trimap in zip(images(), trimaps(), strict=True)]
    for indices in ([0], [2, 2]):  # 45 x 61 alone, 64 x 96 twice
        expected = np.stack(predictor.canvas_outputs([prepared[i] for i in indices]))
        got = model(*stacked(prepared, indices))
        assert got.shape == (len(indices), *SHAPES[indices[0]], 1)
        np.testing.assert_array_equal(got, expected)
    small = np.zeros((1, 20, 40, 3), np.float32)
    with pytest.raises(ValueError, match="at least 32 px per side"):
        model(small, small[..., :1])
    with pytest.raises(ValueError, match=r"expected trimap \(b, h, w, 1\)"):  # h and w differ between the inputs
        model(*stacked(prepared, [0])[:1], stacked(prepared, [2])[1])


def expected_results(models) -> dict[str, list[np.ndarray]]:
    """`Predictor.predict_arrays` of the three test systems at batch size 2 (uint8, and float alphas)."""
    tsr, dim = Predictor(models["tsr"], batch_size=2), Predictor(models["dim"], batch_size=2)
    return {
        "tsr": tsr.predict_arrays(images()),
        "tsr_floats": tsr.predict_arrays(images(), floats=True),
        "segtrimap": Predictor(models["segtrimap"], batch_size=2).predict_arrays(images(), masks()),
        "dim": dim.predict_arrays(images(), trimaps()),
        "dim_floats": dim.predict_arrays(images(), trimaps(), floats=True),
    }


def check_results(results, expected) -> None:
    for kind, wanted in expected.items():
        assert len(results[kind]) == len(wanted), kind
        for index, (got, value) in enumerate(zip(results[kind], wanted, strict=True)):
            assert got.dtype == value.dtype and got.shape == value.shape == SHAPES[index], kind
            np.testing.assert_array_equal(got, value, err_msg=kind)


def test_predict_arrays_equals_the_predictor(models, loaded):
    """Alpha (TSR), trimap classes (SegTrimap, image + mask) and alpha from image + trimap at each image's size (DIM),
    uint8 and float: the loader's recorded pre- and post-processing gives the Predictor's results exactly."""
    tsr, dim = loaded["tsr_b2"], loaded["dim_dynamic"]
    results = {
        "tsr": tsr.predict_arrays(images()),
        "tsr_floats": tsr.predict_arrays(images(), floats=True),
        "segtrimap": loaded["segtrimap_b2"].predict_arrays(images(), masks()),
        "dim": dim.predict_arrays(images(), trimaps(), batch_size=2),
        "dim_floats": dim.predict_arrays(images(), trimaps(), batch_size=2, floats=True),
    }
    check_results(results, expected_results(models))
    assert set(np.unique(np.concatenate([r.ravel() for r in results["segtrimap"]]))) <= {0, 1, 2}
    with pytest.raises(ValueError, match="runs batches of 2, not 3"):
        tsr.predict_arrays(images(), batch_size=3)
    with pytest.raises(ValueError, match="float results exist for alpha outputs only"):
        loaded["segtrimap_b2"].predict_arrays(images(), masks(), floats=True)


def test_loader_imports_no_model_code(models, exports, tmp_path):
    """In a fresh process, loading exports and predicting with them (image + mask -> trimap, image + trimap ->
    alpha) never imports flax, jaxmatte.models, jaxmatte.registry or jaxmatte.backbones; the results are the
    Predictor's."""
    arrays = {f"image{i}": image for i, image in enumerate(images())}
    arrays.update({f"mask{i}": mask for i, mask in enumerate(masks())})
    arrays.update({f"trimap{i}": trimap for i, trimap in enumerate(trimaps())})
    np.savez(tmp_path / "inputs.npz", **arrays)
    script = f"""
        import json, sys
        import numpy as np
        from jaxmatte.exported import load_exported

        data = np.load({str(tmp_path / "inputs.npz")!r})
        pick = lambda kind: [data[f"{{kind}}{{i}}"] for i in range({len(SHAPES)})]
        dim = load_exported({str(exports["dim_dynamic"])!r})
        results = {{
            "segtrimap": load_exported({str(exports["segtrimap_b2"])!r}).predict_arrays(pick("image"), pick("mask")),
            "dim_floats": dim.predict_arrays(pick("image"), pick("trimap"), floats=True),
        }}
        np.savez({str(tmp_path / "results.npz")!r}, **{{f"{{k}}{{i}}": r for k, rs in results.items() for i, r in
                                                         enumerate(rs)}})
        forbidden = ("flax", "jaxmatte.models", "jaxmatte.registry", "jaxmatte.backbones")
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "flax" or m.startswith(forbidden))))
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    saved = np.load(tmp_path / "results.npz")
    results = {kind: [saved[f"{kind}{i}"] for i in range(len(SHAPES))] for kind in ("segtrimap", "dim_floats")}
    expected = expected_results(models)
    check_results(results, {kind: expected[kind] for kind in results})


def test_bf16_export_matches_the_bf16_predictor(models, tmp_path):
    model = load_exported(run_export(models["dim"], tmp_path / "bf16.jax", "--precision", "bf16"))
    assert model.precision == "bf16" and model.batch == 1
    predictor = Predictor(models["dim"], dtype=jnp.bfloat16)
    prepared = [predictor.prepare(images()[0], trimaps()[0])]
    got = model(*stacked(prepared, [0]))
    np.testing.assert_array_equal(got, predictor.canvas_outputs(prepared)[0][None])
    fp32 = Predictor(models["dim"], batch_size=2).canvas_outputs(prepared)[0][None]  # compiled earlier
    assert 0 < np.abs(got - fp32).max() < 0.05  # bf16 compute indeed: close to fp32, not equal


def test_native_model_that_cannot_trace_symbolic_sizes_is_refused(models, tmp_path, monkeypatch, capsys):
    """A native-size model whose code compares its height with its width cannot take symbolic sizes: one line
    says to export canvas sizes one by one, and --canvas does."""
    traced = DIM.run

    def compares_sides(self, x):
        if min(x.shape[1:3]) < 32:  # inconclusive for symbolic h and w
            raise ValueError("too small")
        return traced(self, x)

    monkeypatch.setattr(DIM, "run", compares_sides)
    assert export.main([str(models["dim"]), "--out", str(tmp_path / "any.jax"), "--batch", "dynamic"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be traced with symbolic height and width" in err
    assert "--canvas HxW" in err and not (tmp_path / "any.jax").exists()

    model = load_exported(run_export(models["dim"], tmp_path / "dim_64x96.jax", "--canvas", "64x96"))
    assert [spec.shape for spec in model.inputs] == [(1, 64, 96, 3), (1, 64, 96, 1)]
    image, trimap = images()[2], trimaps()[2]
    expected = Predictor(models["dim"]).predict_arrays([image], [trimap])
    np.testing.assert_array_equal(model.predict_arrays([image], [trimap])[0], expected[0])
    with pytest.raises(ValueError, match=r"expected image \(1, 64, 96, 3\)"):
        model.predict_arrays(images()[:1], trimaps()[:1])


def test_export_refusals_are_one_line(models, tmp_path, capsys):
    out = str(tmp_path / "x.jax")
    cases = [
        ([str(models["tsr"]), "--out", out, "--canvas", "64x64"], "--canvas is for models that run at each image"),
        ([str(models["dim"]), "--out", out, "--canvas", "20x40"], "at least 32 px per side"),
        ([str(tmp_path / "missing"), "--out", out], "checkpoint directory not found"),
        ([str(models["tsr"]), "--out", str(tmp_path)], "exists and is a folder"),
    ]
    for argv, message in cases:
        assert export.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (argv, err)
    for bad in (["--batch", "0"], ["--batch", "many"], ["--platforms", "cpu,quantum"], ["--canvas", "64"]):
        with pytest.raises(SystemExit) as exited:
            export.main([str(models["tsr"]), "--out", out, *bad])
        assert exited.value.code == 2
        assert "Traceback" not in capsys.readouterr().err
    assert not Path(out).exists()


def test_damaged_and_foreign_files_give_one_line(exports, tmp_path):
    original = exports["tsr_b2"].read_bytes()
    header, payload = read_header(exports["tsr_b2"])
    weights_start = payload + header["weights"]["offset"]
    flipped_weight = bytearray(original)
    flipped_weight[weights_start + header["weights"]["length"] // 2] ^= 0x10
    flipped_program = bytearray(original)
    flipped_program[payload + header["stablehlo"]["length"] // 2] ^= 0x10
    header_line = original.index(b"\n") + 1
    cases = {
        "photo.png": (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a jaxmatte export"),
        "empty.jax": (b"", "not a jaxmatte export"),
        "newer.jax": (original.replace(b"jaxmatte-export 1\n", b"jaxmatte-export 2\n", 1), "'jaxmatte-export 2'"),
        "cut_header.jax": (original[: header_line + 50], "the header line does not end"),
        "bad_json.jax": (
            original[:header_line] + b"{not json\n" + original[original.index(b"\n", header_line) :],
            "damaged header",
        ),
        "truncated.jax": (original[: len(original) // 2], "truncated"),
        "weights.jax": (bytes(flipped_weight), "the weights do not match their checksum"),
        "program.jax": (bytes(flipped_program), "the StableHLO section does not match its checksum"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ExportFileError) as raised:
            load_exported(path)
        text = str(raised.value)
        assert text.startswith(f"{path}: ") and message in text and "\n" not in text, (name, text)
    with pytest.raises(ExportFileError, match="no such file"):
        load_exported(tmp_path / "missing.jax")
