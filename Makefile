# The README's two commands: `make serve` and `make test`. Both set up a fresh machine first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 3000
UI_PORT ?= 8501
GRPC_PORT ?= 50051
# The UI calls the API on this machine: 0.0.0.0 is where to listen, not an address to call.
API_URL := http://$(if $(filter 0.0.0.0,$(HOST)),127.0.0.1,$(HOST)):$(PORT)

.PHONY: setup models demo-model serve grpc test lint image-test bench soak demo-accuracy

setup: $(INSTALLED)

# Re-installs only when a requirements file changes. torch is pinned to the CPU wheel that
# lies on the dev/CI machines' local wheel folder (a plain `torch` would pull a CUDA build).
$(INSTALLED): requirements/*.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements/dev.txt -e .
	touch $@

# The default presets into the BentoML model store, skipped when already there: the demo models
# (weights committed under models/demo/) and the tiny preset (built here, random weights: the
# tests' models).
models: setup
	$(BIN)/python models/import_models.py --image demo --video demo
	$(BIN)/python models/import_models.py --image tiny --video tiny

# Trains the demo models again into models/demo/ (23.9 minutes on 2 idle cores: the video
# model beside the image model's MMDiT); `make models` then imports the new weights.
demo-model: setup
	$(BIN)/python models/train_demo.py --out models/demo

# The API on http://$(HOST):$(PORT) (docs at /) and the web UI on http://$(HOST):$(UI_PORT).
# Ctrl-C stops both, and so does the API stopping. The UI sends the first GENSERVE_API_KEYS key.
serve: models
	@GENSERVE_URL=$(API_URL) GENSERVE_API_KEY=$${GENSERVE_API_KEY:-$${GENSERVE_API_KEYS%%,*}} \
		$(BIN)/python -m streamlit run frontend/app.py \
		--server.address $(HOST) --server.port $(UI_PORT) > $(VENV)/ui.log 2>&1 & ui=$$!; \
	trap 'kill $$ui 2>/dev/null' EXIT; \
	echo "genserve API: http://$(HOST):$(PORT)  (docs at /; ready once the models are loaded)"; \
	echo "genserve UI:  http://$(HOST):$(UI_PORT)  (log: $(VENV)/ui.log)"; \
	$(BIN)/bentoml serve service.py --host $(HOST) --port $(PORT)

# The gRPC gateway (the original image_gen.proto) on $(HOST):$(GRPC_PORT), in front of `make serve`'s API.
grpc: setup
	GENSERVE_URL=$(API_URL) GENSERVE_GRPC_HOST=$(HOST) GENSERVE_GRPC_PORT=$(GRPC_PORT) \
		$(BIN)/python -m genserve.clients.grpc_gateway

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

# The benchmarks (bench/README.md): served against in process and the original design, a few
# minutes; the report and plot go to bench/results/. Run it on an otherwise idle machine.
bench: setup
	$(BIN)/python -m bench

# Memory under a long load of every kind (bench/README.md): each process's growth per 1,000 requests,
# ~14 minutes; REQUESTS=N per phase (default 4000). The report and plot go to bench/results/
REQUESTS ?= 4000
soak: setup
	$(BIN)/python -m bench.soak --requests $(REQUESTS)

# How well the served demo preset follows its prompts (bench/README.md): 384 prompts sent 16 at a
# time, 32 edits of each kind and 64 videos, read back; the report goes to bench/results/, its
# figure to docs/demo.png.
demo-accuracy: setup
	$(BIN)/python -m bench.demo --figure docs/demo.png

# The container image's CPU variant, built from the bento with podman and run: an image and a
# video made through its port, a clean SIGTERM stop (docs/deploy.md). Root, podman, mmdebstrap.
image-test: setup
	$(BIN)/python scripts/image_test.py
