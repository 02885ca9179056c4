# The README's two commands: `make demo` (set up and run the main job, the default study) and
# `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.gdlab-installed

.PHONY: setup demo test bench clean

# torch==2.13.0 (CPU) is installed first, and only when the venv has no torch, so that the
# package's loose torch requirement is already met and pip never pulls a multi-GB CUDA build.
# GPU users: create $(VENV) and install their own torch build before running make.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test,parquet,tensorboard]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/gdlab compare studies/default.yaml

test: setup
	$(BIN)/python -m pytest -n 2 tests

# Every benchmark prints its table and writes benchmarks/results/NAME.json (see benchmarks/RESULTS.md).
bench: setup
	$(BIN)/python benchmarks/engine.py
	$(BIN)/python benchmarks/loop.py
	$(BIN)/python benchmarks/fastpath.py
	$(BIN)/python benchmarks/sweep.py
	$(BIN)/python benchmarks/vmap_stacking.py
	$(BIN)/python benchmarks/sharpness.py
	$(BIN)/python benchmarks/distributed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
