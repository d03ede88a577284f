# `make run`: install + the whole pipeline on the embedded default. `make test`: install + the test suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# No telemetry anywhere (CI has no network either).
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
# dvc.yaml stage commands call `python`: make it the venv's.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install run test test-fast lint clean docs bench-overhead bench-int8

install: $(STAMP)

# torch first, pinned: an unpinned torch request resolves to a multi-GB CUDA build. pip compiles bytecode one file
# at a time; compileall compiles it on every core (-qq: like pip, it passes over the few files that do not compile).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -c constraints.txt -e '.[dev]'
	$(PY) -m compileall -qq -j 0 $(VENV)/lib || true
	@touch $@

run: install
	$(PY) -m pruning run

# the 25 slowest tests listed at the end; a test that hangs fails after pyproject's timeout, with its stack
test: install
	$(PY) -m pytest -n 2 --dist loadgroup --durations=25

# the inner loop (docs/contributing.md): everything but the end-to-end runs (tests/e2e: real DVC, Prefect, processes)
# and the benchmarks' smoke tests (tests/bench)
test-fast: install
	$(PY) -m pytest -n 2 --dist loadgroup -m "not e2e and not bench"

lint: install
	$(VENV)/bin/ruff check pruning flows bench tests

# The manual: regenerate docs/params.md's params reference from the config models (tests/test_readme.py fails when it
# is stale), then build the site into site/ strictly (a dead link or anchor fails). View: .venv/bin/mkdocs serve.
docs: install
	$(PY) docs/gen_params.py && $(VENV)/bin/mkdocs build --strict

# MLflow + Prefect overhead of the default run (wall time minus time inside the stage functions), 3 repetitions.
bench-overhead: install
	$(PY) -m bench.overhead --repeats 3

# What INT8 adds at batch 1 as a function of model width (why the default model is a wide one).
bench-int8: install
	$(PY) -m bench.int8_width

clean:
	rm -rf data models reports dvc_plots
