"""The command-line scripts at the repository root (predict.py, evaluate.py, train.py) as modules, for tests that
call their `main(argv)` in-process."""

from __future__ import annotations

import importlib.util
from itertools import count
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
_loads = count()


def load_script(name: str) -> ModuleType:
    """A fresh module of `REPO/name.py` (each call executes the script again, outside `sys.modules`)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script_{next(_loads)}", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
