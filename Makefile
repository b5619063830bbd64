# The README's two commands: `make serve` and `make test`. Both set up a fresh machine first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 3000

.PHONY: setup models serve test lint

setup: $(INSTALLED)

# Re-installs only when a requirements file changes. torch is pinned to the CPU wheel that
# lies on the dev/CI machines' local wheel folder (a plain `torch` would pull a CUDA build).
$(INSTALLED): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements-dev.txt -e .
	touch $@

# The tiny preset, built locally into the BentoML model store (skipped when present).
models: setup
	$(BIN)/python models/import_models.py --image tiny --video tiny

# The API on http://$(HOST):$(PORT) (docs at /, OpenAPI at /docs.json); Ctrl-C stops it.
serve: models
	$(BIN)/bentoml serve service.py --host $(HOST) --port $(PORT)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest
