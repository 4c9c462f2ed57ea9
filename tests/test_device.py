"""predict.py, evaluate.py (model mode) and train.py name the device JAX runs on at start-up, `--device cpu` keeps JAX
to the CPU before its backends start, and `--device gpu` without a GPU fails with one line and exit status 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from scripts import load_script

from jaxmatte.data.io import write_png

REPO = Path(__file__).resolve().parents[1]
DEVICE_LINE = re.compile(rf"^device: cpu x(\d+), jax {re.escape(jax.__version__)}$")


@pytest.fixture(scope="module")
def scripts():
    return {name: load_script(name) for name in ("predict", "evaluate", "train")}


@pytest.fixture(scope="module")
def argvs(tmp_path_factory) -> dict[str, list[str]]:
    """Command lines of each script that get past the argument checks, name the device, then stop at once on a
    missing checkpoint (predict, evaluate) or a bad override (train)."""
    root = tmp_path_factory.mktemp("device")
    write_png(root / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    (root / "data").mkdir()
    missing = str(root / "no_checkpoint")
    return {
        "predict": [str(root / "images"), "--checkpoint", missing, "--output", str(root / "out")],
        "evaluate": ["--checkpoint", missing, "--data", str(root / "data")],
        "train": ["--config", "tsr.py:demo", "--config.optim.epochs=x"],
    }


def has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


@pytest.mark.parametrize("name", ["predict", "evaluate", "train"])
def test_start_up_line_names_the_device(scripts, argvs, name, capsys):
    for device in ("auto", "cpu") if not has_gpu() else ("cpu",):
        assert scripts[name].main([*argvs[name], "--device", device]) == 2
        captured = capsys.readouterr()
        first = captured.out.splitlines()[0]
        match = DEVICE_LINE.match(first)
        assert match and int(match.group(1)) == len(jax.devices("cpu")), (name, device, first)
        assert "device:" not in captured.err


@pytest.mark.parametrize("name", ["predict", "evaluate", "train"])
def test_gpu_without_a_gpu_is_one_line_and_exit_2(scripts, argvs, name, capsys):
    if has_gpu():
        pytest.skip("this machine has a GPU")
    assert scripts[name].main([*argvs[name], "--device", "gpu"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        "error: --device gpu: JAX finds no GPU (only cpu); install JAX's GPU build with pip install 'jaxmatte[gpu]'"
    )
    assert "device:" not in captured.out


def test_cpu_is_chosen_before_jax_starts():
    """In a fresh process told to use a platform this machine lacks ($JAX_PLATFORMS=cuda, which alone makes JAX
    fail), `select_device("cpu")` pins JAX to the CPU before any backend starts; jaxmatte.cli imports no JAX."""
    script = """
        import json, sys
        import jaxmatte.cli as cli
        assert "jax" not in sys.modules
        line = cli.select_device("cpu")
        import jax, jax.numpy as jnp
        print(json.dumps([line, jax.config.jax_platforms, jax.default_backend(), float(jnp.ones(3).sum())]))
    """
    env = {**os.environ, "JAX_PLATFORMS": "cuda"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    line, platforms, backend, total = json.loads(done.stdout.strip().splitlines()[-1])
    assert DEVICE_LINE.match(line) and platforms == "cpu" and backend == "cpu" and total == 3.0
