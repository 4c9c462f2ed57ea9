"""No path that reads a checkpoint runs pickled code; damaged files and directories give one clear line.

Covered: every `port/convert.py` kind's `--src` (with and without `--timm-model`), `--mae` / `--backbone` / DIM's
pruning cfg, `load_pretrained` (what `model.init_from` / `teacher.path` use), run checkpoints (resume), and the NaN/Inf
warning of a conversion.
"""

from __future__ import annotations

import builtins
import json
import logging
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import jaxmatte
from jaxmatte import pretrained
from jaxmatte.backbones import swin
from jaxmatte.models.tsr import modeling
from port import convert, load

REPO = Path(__file__).resolve().parent.parent
KINDS = sorted(convert.converters())
TIMM_NAMES = {
    "vit": "vit_tiny_patch16_224",
    "swin": "swin_tiny_patch4_window7_224",
    "dinov3": "vit_base_patch16_dinov3",
}
PAYLOAD_FORMATS = ("zip.pth", "legacy.pth", "raw.pkl")


class _Payload:
    """Unpickles to a call that writes `marker`: a loader that runs pickled code leaves the file behind."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('ran')",))


def write_payload(path: Path, marker: Path, fmt: str = "zip.pth") -> Path:
    """A checkpoint-looking file (tensors + the payload): torch zip, legacy torch stream or a bare pickle."""
    content = {"state_dict": {"w": torch.ones(2)}, "model": _Payload(marker)}
    if fmt == "zip.pth":
        torch.save(content, path)
    elif fmt == "legacy.pth":
        torch.save(content, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps({"w": np.ones(2), "model": _Payload(marker)}))
    return path


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "payload-ran"
    yield path
    assert not path.exists(), "pickled code ran"


def one_error_line(err: str, *names: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    for name in names:
        assert name in lines[0], f"{name} not named in: {lines[0]}"
    return lines[0]


def test_payload_runs_when_unpickled_unsafely(tmp_path):
    """The payload is live: plain `pickle.loads` writes the marker (so its absence below means something)."""
    ran = tmp_path / "ran"
    pickle.loads(write_payload(tmp_path / "raw.pkl", ran, "raw.pkl").read_bytes())
    assert ran.read_text() == "ran"


@pytest.mark.parametrize("fmt", PAYLOAD_FORMATS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_converter_refuses_pickled_code_in_src(kind, fmt, tmp_path, marker, capsys):
    src = write_payload(tmp_path / f"evil-{fmt}", marker, fmt)
    out = tmp_path / "out"
    assert convert.main([kind, "--src", str(src), "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, src.name)
    assert not out.exists()


@pytest.mark.parametrize("kind", sorted(TIMM_NAMES))
def test_timm_resizing_reads_src_weights_only(kind, tmp_path, marker, capsys):
    """`--timm-model` used to hand the file to timm (its own torch.load); now it is read here first."""
    src = write_payload(tmp_path / "evil-zip.pth", marker)
    argv = [kind, "--src", str(src), "--out", str(tmp_path / "out"), "--timm-model", TIMM_NAMES[kind]]
    assert convert.main([*argv, "--img-size", "256"]) == 2
    one_error_line(capsys.readouterr().err, src.name, "refused")


@pytest.mark.parametrize(("kind", "option"), [("segtrimap", "--mae"), ("dinomatte", "--backbone")])
def test_untrained_builders_refuse_pickled_code(kind, option, tmp_path, marker, capsys):
    src = write_payload(tmp_path / "evil-zip.pth", marker)
    assert convert.main([kind, option, str(src), "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys.readouterr().err, src.name, "refused")


def test_dim_pruning_cfg_refuses_pickled_code(tmp_path, marker):
    from jaxmatte.models.dim.pruning import load_cfg

    with pytest.raises(load.CheckpointError, match=r"pruned.tar: refuse[sd]"):
        load_cfg(write_payload(tmp_path / "pruned.tar", marker))


def test_model_directories_never_unpickle(tmp_path, marker, tiny_model_dir):
    """`model.init_from` / `teacher.path` / `load_pretrained`: a pickle file, or pickle bytes in place of the Orbax
    files, is an error and nothing runs."""
    from jaxmatte.train.warm_start import load_directory

    evil = write_payload(tmp_path / "evil-zip.pth", marker)
    with pytest.raises(FileNotFoundError, match="config.json"):
        jaxmatte.load_pretrained(evil)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_directory(tmp_path, ["tsr"], "model.init_from")
    poisoned = copy_dir(tiny_model_dir, tmp_path / "poisoned")
    for file in (poisoned / "params").rglob("*"):
        if file.is_file():
            file.write_bytes(evil.read_bytes())
    with pytest.raises(pretrained.ModelDirError, match="poisoned/params: damaged"):
        jaxmatte.load_pretrained(poisoned)


# -- damaged files: one line naming the file --


@pytest.fixture(scope="module")
def vit_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=1).eval()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    torch.save({"model": state}, root / "vit.pth")
    from safetensors.torch import save_file

    save_file(state, str(root / "vit.safetensors"))
    return root


@pytest.mark.parametrize("keep", [0.01, 0.5, 0.999])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_weights_give_one_line(vit_files, suffix, keep, tmp_path, capsys):
    data = (vit_files / f"vit{suffix}").read_bytes()
    src = tmp_path / f"cut{suffix}"
    src.write_bytes(data[: max(8, int(len(data) * keep))])
    assert convert.main(["vit", "--src", str(src), "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys.readouterr().err, str(src), "truncated or damaged")


def test_weights_only_refusal_is_one_line_without_unsafe_advice(tmp_path, marker):
    with pytest.raises(load.CheckpointError) as caught:
        load.read_checkpoint(write_payload(tmp_path / "evil-zip.pth", marker))
    text = str(caught.value)
    assert "\n" not in text and "weights_only=False" not in text and "exec" in text


# -- converted directories --


def _tiny_tsr():
    config = modeling.TSRConfig(
        backbone=swin.SwinConfig(window_size=7, depths=(1, 1, 1, 1), embed_dim=8, num_heads=(1, 1, 1, 1)),
        safe_size=224,
        img_size=64,
        decoder_channels=(32, 16, 8),
        head_channels=(8, 8),
        refiner=modeling.RefinerConfig(mid_channels=8, num_blocks=1),
    )
    abstract = pretrained.abstract_model("tsr", config)
    rng = np.random.default_rng(0)
    values = {k: 0.1 * rng.standard_normal(v.shape) for k, v in pretrained.stored_shapes(abstract).items()}
    values = {k: np.abs(v) + 0.5 if k.endswith(".var") else v for k, v in values.items()}
    return pretrained.fill(abstract, values), config


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    model, config = _tiny_tsr()
    info = {"preprocessing": {"resize": "stretch", "size": 64}}
    return pretrained.save_pretrained(model, config, tmp_path_factory.mktemp("tiny") / "model", info=info)


def copy_dir(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def _cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def damage(directory: Path, how: str) -> None:
    params = directory / "params"
    if how == "one data file":
        _cut(sorted((params / "d").iterdir())[0], 100)
    elif how == "all data files":
        for file in params.rglob("d/*"):
            _cut(file, 50)
    elif how == "manifest":
        _cut(params / "manifest.ocdbt", 10)
    elif how == "metadata":
        _cut(params / "_METADATA", 30)
    elif how == "empty params":
        for file in sorted(params.rglob("*"), reverse=True):
            file.unlink() if file.is_file() else file.rmdir()
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["one data file", "all data files", "manifest", "metadata", "empty params"])
def test_damaged_orbax_params_give_one_line(tiny_model_dir, tmp_path, how):
    directory = copy_dir(tiny_model_dir, tmp_path / "model")
    damage(directory, how)
    with pytest.raises(pretrained.ModelDirError) as caught:
        jaxmatte.load_pretrained(directory)
    text = str(caught.value)
    assert "\n" not in text and text.startswith(f"{directory / 'params'}: damaged"), text
    assert "tensorstore_spec" not in text


def test_damaged_orbax_params_leave_no_asyncio_noise(tiny_model_dir, tmp_path):
    """Tracebacks of reads still running when Orbax gives up ("Event loop is closed", "exception was never
    retrieved") used to follow the one useful error, by the dozen; repeated loads make them near certain."""
    directory = copy_dir(tiny_model_dir, tmp_path / "model")
    damage(directory, "all data files")
    script = f"""
        import gc, jaxmatte
        for _ in range(6):
            try:
                jaxmatte.load_pretrained({str(directory)!r})
            except ValueError as err:
                print(err)
            gc.collect()
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    noise = [line for line in done.stderr.splitlines() if "Traceback" in line or "never retrieved" in line]
    assert not noise, f"{len(noise)} tracebacks / asyncio records:\n{done.stderr[:3000]}"
    assert done.stdout.count("params: damaged") == 6, done.stdout


def test_predict_cli_reports_damaged_params_in_one_line(tiny_model_dir, tmp_path):
    directory = copy_dir(tiny_model_dir, tmp_path / "model")
    damage(directory, "all data files")
    image = tmp_path / "in.png"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(image)
    argv = ["predict.py", "--checkpoint", str(directory), "--output", str(tmp_path / "out"), str(image)]
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert len(errors) == 1 and "params: damaged" in errors[0], done.stderr


def test_closed_loop_and_orphaned_read_filters():
    """The hooks drop exactly the two kinds of after-failure noise and pass everything else on."""
    import asyncio

    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as err:
        closed = err
    assert pretrained._closed_loop_callback(closed, closed.__traceback__)
    other = RuntimeError("Event loop is closed")
    assert not pretrained._closed_loop_callback(other, None)
    assert not pretrained._closed_loop_callback(ValueError("x"), closed.__traceback__)

    def record(message: str, error: BaseException | None) -> logging.LogRecord:
        exc_info = (type(error), error, None) if error else None
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, (), exc_info)

    read = ValueError('OUT_OF_RANGE: Error reading "a/0.0" in OCDBT database')
    assert not pretrained._orphaned_read_filter(record("Future exception was never retrieved\nfuture: ...", read))
    assert not pretrained._orphaned_read_filter(record("Task exception was never retrieved\nfuture: ...", read))
    assert pretrained._orphaned_read_filter(record("Task exception was never retrieved", ValueError("mine")))
    assert pretrained._orphaned_read_filter(record("Executing <Task> took 1.2 seconds", None))


def test_run_checkpoint_resume_of_damaged_files_is_quiet(tmp_path):
    """Resume (`RunCheckpoints.restore_latest`) restores through Orbax too: refused, and no asyncio noise."""
    script = f"""
        import gc, grain, jax.numpy as jnp
        from jaxmatte.train.checkpoint import RunCheckpoints
        state = {{f"w{{i}}": jnp.full((64, 64), float(i)) for i in range(12)}}
        iterator = iter(grain.MapDataset.range(8).to_iter_dataset())
        checkpoints = RunCheckpoints({str(tmp_path)!r})
        checkpoints.save(1, state, iterator, {{"step": 1}})
        checkpoints.close()
        for file in __import__("pathlib").Path({str(tmp_path)!r}).rglob("d/*"):
            file.write_bytes(file.read_bytes()[:40])
        for _ in range(4):
            checkpoints = RunCheckpoints({str(tmp_path)!r})
            try:
                checkpoints.restore_latest(state, iter(grain.MapDataset.range(8).to_iter_dataset()))
            except Exception as err:
                print("refused", type(err).__name__)
            checkpoints.close()
            gc.collect()
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    noise = [line for line in done.stderr.splitlines() if "Event loop is closed" in line or "never retrieved" in line]
    assert not noise, f"{len(noise)} asyncio reports:\n{done.stderr[:3000]}"
    assert done.stdout.count("refused") == 4, done.stdout


def test_config_json_missing_or_corrupt(tiny_model_dir, tmp_path):
    directory = copy_dir(tiny_model_dir, tmp_path / "model")
    config = directory / "config.json"
    good = config.read_text()
    for text, match in [
        ('{"family": "tsr", "con', "config.json: not readable JSON"),
        ("[1, 2]", "config.json: not a jaxmatte model config"),
        ('{"family": "tsr", "config": null}', "config.json: not a jaxmatte model config"),
        (json.dumps({**json.loads(good), "info": [1]}), "config.json: 'info' is a list"),
    ]:
        config.write_text(text)
        with pytest.raises(pretrained.ModelDirError, match=match):
            jaxmatte.load_pretrained(directory)
    config.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(pretrained.ModelDirError, match="config.json: not readable JSON"):
        jaxmatte.load_pretrained(directory)
    config.unlink()
    with pytest.raises(FileNotFoundError, match="config.json: not found"):
        jaxmatte.load_pretrained(directory)
    assert "config.json: missing (params/ is there)" in pretrained.model_dir_problem(directory)


def test_config_without_params_names_the_params(tiny_model_dir, tmp_path):
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"model/params: missing \(config.json is there"):
        jaxmatte.load_pretrained(directory)
    assert "params: missing" in pretrained.model_dir_problem(directory)
    assert pretrained.model_dir_problem(tiny_model_dir) is None


# -- non-finite weights --


def test_non_finite_weights_warn_and_are_recorded(tmp_path, capsys):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=1).eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"model": state}, tmp_path / "clean.pth")
    state["blocks.0.attn.qkv.weight"][0, :3] = float("nan")
    state["norm.weight"][1] = float("inf")
    torch.save({"model": state}, tmp_path / "bad.pth")

    assert convert.main(["vit", "--src", str(tmp_path / "clean.pth"), "--out", str(tmp_path / "clean")]) == 0
    assert "non-finite" not in capsys.readouterr().err
    assert "non_finite" not in json.loads((tmp_path / "clean" / "config.json").read_text())["info"]

    assert convert.main(["vit", "--src", str(tmp_path / "bad.pth"), "--out", str(tmp_path / "bad")]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "bad.pth: 4 non-finite values (NaN/Inf) in 2 parameters" in warning[0], warning
    assert "blocks.0.attn.qkv.kernel" in warning[0] and "norm.scale" in warning[0]
    recorded = json.loads((tmp_path / "bad" / "config.json").read_text())["info"]["non_finite"]
    assert recorded == {"values": 4, "parameters": 2, "first": ["blocks.0.attn.qkv.kernel", "norm.scale"]}
