# tradelab: `make demo` (offline main job), `make test` (what CI runs), `make bench` (benchmarks), `make docs` (site).
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
UV := .tools/bin/uv
UV_VERSION := 0.13.9
PYTHON ?= $(shell command -v python3.11 || command -v python3)
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
export NUMBA_CACHE_DIR := $(abspath .cache/numba)
export MPLCONFIGDIR := $(abspath .cache/matplotlib)
BIN := $(VENV)/bin

help:
	@echo "make demo   - run the main job offline on embedded defaults"
	@echo "make test   - install everything, check notebooks, run nbdev-test and pytest"
	@echo "make bench  - print the benchmarks"
	@echo "make export - nbdev-export + nbdev-clean after editing notebooks"
	@echo "make lint   - ruff check on the notebooks, the package, tests, bench, apps and tools"
	@echo "make docs   - build the documentation site from the notebooks into _docs/ (mkdocs)"

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install -q "uv==$(UV_VERSION)"

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra dev --extra docs --python $(PYTHON)
	@mkdir -p .cache/numba .cache/matplotlib data
	@touch $@

export: install
	$(BIN)/nbdev-export
	$(BIN)/nbdev-clean

check-notebooks: install
	bash tools/check_notebooks.sh

services:
	bash tools/services.sh

chromium:
	bash tools/chromium.sh

lint: install
	$(BIN)/ruff check --output-format concise .

docs: install
	@set -e; t0=$$(date +%s); \
	$(BIN)/python tools/docs.py; \
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --quiet --clean; \
	echo "docs: _docs/index.html ($$(find _docs -name '*.html' | wc -l) pages) built in $$(( $$(date +%s) - t0 ))s"

test: install services chromium check-notebooks lint docs
	$(BIN)/nbdev-test --n-workers 1 nbs
	$(BIN)/pytest -q

bench: install services
	@set -e; for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b; done

demo: install
	bash tools/demo.sh

soak: install
	TRADELAB_SOAK=full $(BIN)/python tools/soak.py

.PHONY: help install export check-notebooks services chromium lint docs test bench demo soak
