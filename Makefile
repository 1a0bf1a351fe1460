# Two commands do everything on a fresh machine:
#   make run   -> creates .venv, installs xent_jax[experiments], reproduces every experiment
#   make test  -> creates .venv, installs xent_jax[test], runs the suite with x64 off and on
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/$(shell date +%Y%m%d-%H%M%S)
PYTEST_ARGS ?= -n 2

INSTALL_CHECK_VENV := build/install-check

.PHONY: run test lint format bench install-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[experiments]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(PY) -m experiments.reproduce --workdir=$(WORKDIR)

lint: $(VENV)/.installed-test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.installed-test
	$(PY) -m ruff format .

test: lint
	JAX_ENABLE_X64=0 $(PY) -m pytest $(PYTEST_ARGS)
	JAX_ENABLE_X64=1 $(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-run
	$(PY) -m experiments.benchmark --config=configs/benchmark.py --workdir=runs/bench-$(shell date +%Y%m%d-%H%M%S)

# `pip install .` (no extras) in a fresh venv, then the README's quick start there.
install-check:
	rm -rf $(INSTALL_CHECK_VENV)
	$(PYTHON) -m venv $(INSTALL_CHECK_VENV)
	$(INSTALL_CHECK_VENV)/bin/python -m pip install -q .
	$(INSTALL_CHECK_VENV)/bin/python tests/readme_quickstart.py

clean:
	rm -rf $(VENV) runs build .pytest_cache .ruff_cache
