# Quick start: `make demo` (main job) and `make test` (test suite). Both create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo port-demo test lint bench bench-gpu install-check

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python train.py --config configs/tsr.py:demo

port-demo: $(STAMP)
	$(BIN)/python port/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/backbones.py
	$(BIN)/python bench/metrics.py

# On a GPU machine: JAX's CUDA build (the gpu extra) beside the dev install, then the one-run GPU benchmark.
bench-gpu: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[gpu]'
	$(BIN)/python bench/gpu.py

# A plain `pip install .` (no extras) in a fresh venv must run the library and the scripts; the installed copy is
# imported (`-P`: the source tree is not on sys.path). pip's cache makes repeated runs cheap.
IMPORT_CHECK := import importlib, pkgutil, jaxmatte, port; \
  assert "site-packages" in jaxmatte.__file__, jaxmatte.__file__; \
  names = [m.name for p in (jaxmatte, port) for m in pkgutil.walk_packages(p.__path__, p.__name__ + ".")]; \
  [importlib.import_module(name) for name in names]; \
  from jaxmatte import registry; registry.discover(); \
  import jaxmatte.metrics.dis, jaxmatte.train.loop, jaxmatte.predict, jaxmatte.evaluation

install-check:
	@set -e; start=$$(date +%s); dir=$$(mktemp -d); trap 'rm -rf "$$dir"' EXIT; \
	rm -rf build; \
	$(PYTHON) -m venv "$$dir/venv"; \
	"$$dir/venv/bin/python" -m pip install -q . > "$$dir/pip.log" 2>&1 || { cat "$$dir/pip.log"; exit 1; }; \
	"$$dir/venv/bin/python" -P -c '$(IMPORT_CHECK)'; \
	for script in train.py predict.py evaluate.py; do "$$dir/venv/bin/python" -P $$script --help > /dev/null; done; \
	echo "install-check: plain 'pip install .' imports every module and runs the scripts ($$(( $$(date +%s) - start )) s)"
