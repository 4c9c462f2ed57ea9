"""pyproject declares what the code imports: the base install runs the library and the scripts, `[port]` adds what
conversion needs (torch, timm, safetensors), `[dev]` what the tests and benchmarks need.

The static check maps every import (function-level ones included) to its installed distribution; the runtime check
imports every module and runs the scripts' `--help` with the `[port]` packages blocked. `make install-check` (in CI)
does the real thing: a clean venv with a plain `pip install .`.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
SCRIPTS = ("train.py", "predict.py", "evaluate.py")
PORT_ONLY = ("torch", "torchvision", "timm", "safetensors")  # conversion (and tests) only


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> tuple[str, list[str]]:
    """(distribution, extras) of a PEP 508 requirement."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", requirement)
    assert match, requirement
    extras = [e.strip() for e in (match.group(2) or "").split(",") if e.strip()]
    return normalize(match.group(1)), extras


def declared(*extras: str) -> set[str]:
    """Distributions of the base dependencies plus `extras` (self-references such as ``jaxmatte[port]`` followed)."""
    names: set[str] = set()
    pending, seen = [None, *extras], set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        requirements = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
        for requirement in requirements:
            name, wanted = requirement_name(requirement)
            if name == normalize(PROJECT["name"]):
                pending.extend(wanted)
            else:
                names.add(name)
    return names


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every absolute import in `path`, at any depth."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def local_modules() -> set[str]:
    """First-party packages, the scripts and the test / bench helpers importable by their file name."""
    names = {"jaxmatte", "port", "bench", "tests"} | {Path(s).stem for s in SCRIPTS}
    names |= {p.stem for p in (REPO / "tests").glob("*.py")} | {p.stem for p in (REPO / "bench").glob("*.py")}
    return names


def undeclared(files: list[Path], allowed: set[str]) -> list[str]:
    """'file: module (distribution)' for each third-party import whose distribution is not in `allowed`."""
    owners = importlib.metadata.packages_distributions()
    skip = set(sys.stdlib_module_names) | local_modules() | {"__future__"}
    problems = []
    for path in files:
        for module in sorted(imported_modules(path) - skip):
            dists = {normalize(d) for d in owners.get(module, [])}
            if not dists:
                problems.append(f"{path.relative_to(REPO)}: {module} (no installed distribution provides it)")
            elif not dists & allowed:
                problems.append(f"{path.relative_to(REPO)}: {module} ({', '.join(sorted(dists))})")
    return problems


def sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def test_library_and_scripts_need_only_the_base_dependencies():
    files = sources("jaxmatte") + [REPO / s for s in SCRIPTS]
    assert not undeclared(files, declared()), "imports missing from [project] dependencies"


def test_port_needs_only_base_and_port_extra():
    assert not undeclared(sources("port"), declared("port")), "imports missing from the [port] extra"


def test_tests_and_benchmarks_need_only_declared_extras():
    assert not undeclared(sources("tests", "bench"), declared("dev")), "imports missing from the [dev] extra"


def test_conversion_packages_stay_out_of_the_base_dependencies():
    base = declared()
    assert not [name for name in PORT_ONLY if name in base]
    assert set(PORT_ONLY) <= declared("port")


def test_self_check_sees_function_level_imports(tmp_path):
    """The audit reads lazy imports too (skimage in `dis.py` was module-level, torch in `port/` is lazy)."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from skimage.morphology import skeletonize\n    import torch.nn\n")
    assert imported_modules(probe) == {"skimage", "torch"}


def test_every_module_and_script_runs_without_the_port_extra():
    """With torch & co. unimportable: every module of jaxmatte/ and port/ imports, every model family registers,
    and `train.py` / `predict.py` / `evaluate.py --help` work."""
    script = f"""
        import importlib, pkgutil, runpy, sys
        for name in {list(PORT_ONLY)!r}:
            sys.modules[name] = None  # `import name` now raises ImportError
        import jaxmatte, port
        from jaxmatte import registry
        for package in (jaxmatte, port):
            for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                importlib.import_module(info.name)
        registry.discover()
        for script in {list(SCRIPTS)!r}:
            sys.argv = [script, "--help"]
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as done:
                assert done.code in (0, None), (script, done.code)
        print("ok")
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
