# parley: the two commands of README.md are `make demo` and `make test`.
# Both create/update .venv from requirements.lock (exact, tested versions) and install ffmpeg when missing.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
SHARED ?= $(abspath ../shared)
export PARLEY_ASSETS ?= $(SHARED)/assets
CLIPS_DIR ?= $(SHARED)/data/clips
CLIPS ?= $(wildcard $(CLIPS_DIR)/*.mp4)
DEMO_OUT ?= demo_out
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench lock clean env

$(STAMP): requirements.lock pyproject.toml overrides.txt Makefile
	@command -v ffmpeg >/dev/null || (echo "installing ffmpeg (apt)"; \
	  (apt-get update -qq && apt-get install -y -qq ffmpeg) >/dev/null || \
	  (echo "ffmpeg is missing and could not be installed: install it with your package manager" >&2; exit 1))
	@command -v uv >/dev/null || $(PYTHON) -m pip install -q uv
	@test -x $(VENV)/bin/python || uv venv -q --python $(PYTHON) $(VENV)
	# Every package, torch/torchvision included (their default build is the CUDA one, which runs on CPU too), comes
	# from uv's default index: --no-config ignores uv.toml files, and uv never reads pip's settings (pip.conf,
	# PIP_FIND_LINKS), so a machine's local wheel folders or indexes for pip are not used.
	# Bytecode is compiled at install: with PYTHONDONTWRITEBYTECODE set (as on these machines) every
	# process, Ray workers included, would otherwise recompile torch/sympy from source (~5 s each).
	VIRTUAL_ENV=$(VENV) uv pip install -q --no-config --compile-bytecode -r requirements.lock
	VIRTUAL_ENV=$(VENV) uv pip install -q --no-config --no-deps -e .
	@$(RECORD_ASSETS)
	@touch $(STAMP)

# The venv remembers where the model files are, so `parley` typed in a shell (activated or not) finds the files
# make uses: workers/assets.py reads $(VENV)/parley-assets after PARLEY_ASSETS, before the user cache.
RECORD_ASSETS = if [ -d "$(PARLEY_ASSETS)" ]; then echo "$(abspath $(PARLEY_ASSETS))" > $(VENV)/parley-assets; \
	else rm -f $(VENV)/parley-assets; fi

env: $(STAMP)
	@$(RECORD_ASSETS)
	@if [ -f $(VENV)/parley-assets ]; then echo "model files: $$(cat $(VENV)/parley-assets) (recorded in $(VENV)/parley-assets)"; \
	else echo "model files: $(PARLEY_ASSETS) is missing; parley looks in ~/.cache/parley/assets, then downloads" \
	  "(set PARLEY_ASSETS and run make env again to record a folder)"; fi

DEMO_PRESET ?= cpu
DEMO_STEPS_SCALE ?= 0.05
DEMO_AUDIO ?= $(SHARED)/data/audio/RD_Radio31_000.wav
DEMO_TRACKING = sqlite:///$(abspath $(DEMO_OUT))/mlflow.db

# The whole loop on the embedded defaults (local Ray, SQLite MLflow): build the shared clips, train every
# identity briefly on CPU (one Tune trial each), register, promote, render one clip from the shared audio.
demo: $(STAMP)
	@if [ ! -d "$(CLIPS_DIR)" ]; then echo "no clips: put the shared folder at $(SHARED) or run make demo CLIPS_DIR=/my/clips" >&2; exit 1; fi
	$(VENV)/bin/parley build-dataset --input $(CLIPS_DIR) --output $(DEMO_OUT)/dataset
	$(VENV)/bin/parley export radnerf --dataset $(DEMO_OUT)/dataset --output $(DEMO_OUT)/radnerf --overwrite \
	  --identity $$($(VENV)/bin/python -c "from pipelines.dataset import Dataset; print(Dataset('$(DEMO_OUT)/dataset').identity_names()[0])")
	$(VENV)/bin/parley train --dataset $(DEMO_OUT)/dataset --identities all --preset $(DEMO_PRESET) \
	  --steps-scale $(DEMO_STEPS_SCALE) --storage $(abspath $(DEMO_OUT))/tune --tracking-uri $(DEMO_TRACKING)
	$(VENV)/bin/parley registry promote --tracking-uri $(DEMO_TRACKING)
	$(VENV)/bin/parley registry list --tracking-uri $(DEMO_TRACKING)
	$(VENV)/bin/parley render --tracking-uri $(DEMO_TRACKING) --audio $(DEMO_AUDIO) --out $(DEMO_OUT)/render.mp4 \
	  --model models:/avatar-$$($(VENV)/bin/python -c "from pipelines.dataset import Dataset; print(Dataset('$(DEMO_OUT)/dataset').identity_names()[0])")@champion
	@echo "dataset: $(DEMO_OUT)/dataset (qc/*.png, qc/quality.csv); RAD-NeRF layout: $(DEMO_OUT)/radnerf"
	@echo "video: $(DEMO_OUT)/render.mp4"
	@echo "MLflow UI: $(VENV)/bin/mlflow ui --backend-store-uri $(DEMO_TRACKING) --port 5000  ->  http://127.0.0.1:5000"

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/preprocess.py $(firstword $(CLIPS))

# Regenerate the lock after changing dependencies in pyproject.toml.
lock:
	uv pip compile pyproject.toml --extra dev --python-version 3.11 --override overrides.txt \
	  --no-config -o requirements.lock

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache .mypy_cache
