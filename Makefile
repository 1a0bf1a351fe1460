# Two commands do everything on a fresh machine:
#   make run   -> creates .venv, installs xent_jax[experiments], reproduces every experiment
#   make test  -> creates .venv, installs xent_jax[test], runs the suite with x64 off and on
# On a machine with an accelerator (jax installed for it, e.g. jax[cuda12], in .venv):
#   make gpu-check -> the suite on the default platforms, then the :gpu benchmark (SPEC §9)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/$(shell date +%Y%m%d-%H%M%S)
PYTEST_ARGS ?= -n 2
GPU_WORKDIR ?= runs/gpu-check-$(shell date +%Y%m%d-%H%M%S)
GPU_PYTEST_ARGS ?= -n 4

INSTALL_CHECK_VENV := build/install-check

.PHONY: run test lint format bench gpu-check install-check clean

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

# The tests share one persistent XLA compilation cache (keyed by the program, the compile
# options and the jax version, so a hit is the same executable): the x64=1 pass and the
# experiments' subprocesses reuse what the first pass compiled (~25% less suite time).
# They compile without LLVM's optimisation passes (XLA's own HLO passes, fusion included,
# still run): most programs in the suite run once, and optimising their
# machine code costs more than it saves (~14% less suite time). Fusions are emitted by
# XLA's elemental IR emitter rather than the MLIR fusion emitters: the same HLO, fusion and
# math (exp flushes the same tails, measured in float32 and float64) at 42% less compile
# time; with mpmath on gmpy2 (the test extra) a cold suite went from 508 s to 348 s. The
# benchmark and `make run` keep XLA's defaults.
TEST_CACHE := JAX_COMPILATION_CACHE_DIR=$(CURDIR)/build/jax-test-cache \
  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0 \
  XLA_FLAGS="$(XLA_FLAGS) --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true \
  --xla_cpu_use_fusion_emitters=false"

test: lint
	$(TEST_CACHE) JAX_ENABLE_X64=0 $(PY) -m pytest $(PYTEST_ARGS)
	$(TEST_CACHE) JAX_ENABLE_X64=1 $(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-run
	$(PY) -m experiments.benchmark --config=configs/benchmark.py --workdir=runs/bench-$(shell date +%Y%m%d-%H%M%S)

# The library's tests on the default platforms (JAX_PLATFORMS unset: the accelerator, with
# the CPU backend beside it for host callbacks), x64 off and on, with junit reports, then
# the benchmark sized for one accelerator (at most five minutes), all into GPU_WORKDIR.
# No memory preallocation in the tests: several pytest workers share the device.
gpu-check: $(VENV)/.installed-test
	@env -u JAX_PLATFORMS $(PY) -c "import jax, sys; d = jax.devices()[0]; \
	  print(f'gpu-check on {d.device_kind} ({d.platform})'); \
	  sys.exit('gpu-check: no accelerator (jax.devices() is the CPU); install jax for it, e.g. jax[cuda12]' if d.platform == 'cpu' else 0)"
	mkdir -p $(GPU_WORKDIR)
	status=0; \
	for x64 in 0 1; do \
	  env -u JAX_PLATFORMS XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_ENABLE_X64=$$x64 \
	    $(PY) -m pytest $(GPU_PYTEST_ARGS) --junitxml=$(GPU_WORKDIR)/tests-x64-$$x64.xml || status=1; \
	done; \
	env -u JAX_PLATFORMS $(PY) -m experiments.benchmark --config=configs/benchmark.py:gpu \
	  --workdir=$(GPU_WORKDIR)/benchmark || status=1; \
	exit $$status

# `pip install .` (no extras) in a fresh venv, then the README's quick start there.
install-check:
	rm -rf $(INSTALL_CHECK_VENV)
	$(PYTHON) -m venv $(INSTALL_CHECK_VENV)
	$(INSTALL_CHECK_VENV)/bin/python -m pip install -q .
	$(INSTALL_CHECK_VENV)/bin/python tests/library/readme_quickstart.py

clean:
	rm -rf $(VENV) runs build .pytest_cache .ruff_cache
