# The two commands a newcomer runs (see README.md). Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	# TensorRT's type stubs, outside site-packages: installed there they would make `import tensorrt`
	# succeed as an empty namespace package. --no-deps: they require NVIDIA's real tensorrt wheel.
	$(BIN)/python -m pip install -q --no-deps --target $(VENV)/stubs tensorrt-stubs==10.13.0.35.1
	touch $@

demo: $(VENV)/.installed   ## sample data -> train -> export -> eval -> stream, prints tables
	$(BIN)/edgesdk demo --out out/demo

test: $(VENV)/.installed lint   ## system packages the tests use (when it can), then every test but the GPU ones
	.ci/system-deps
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed   ## ruff (lint rules, import order, formatting) and mypy over the package, as CI runs them
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf out .pytest_cache
