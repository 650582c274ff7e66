# Every daily task of the platform. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements-dev.lock pyproject.toml | cksum | cut -d' ' -f1)

# Local defaults a user can override: make train EPOCHS=3 DATASET=digits
DATASET ?= digits
MODEL ?= resnet18
EPOCHS ?= 10
WORKERS ?= 2
MODEL_NAME ?= digits-classifier
MLFLOW_PORT ?= 5000
MLFLOW_TRACKING_URI ?= http://127.0.0.1:$(MLFLOW_PORT)
# The local cluster of `make ray-up`: ports (each checked free first) and its record for ray-down.
RAY_PORT ?= 6379
DASHBOARD_PORT ?= 8265
RAY_CLIENT_PORT ?= 10001
DASHBOARD_AGENT_PORT ?= 52365
RAY_DASHBOARD ?= http://127.0.0.1:$(DASHBOARD_PORT)
RAY_RECORD ?= results/ray/ray.json
# One line per taken port, naming what holds it and the variable that moves it.
CHECK_PORTS := $(PY) -m cluster.local_ports check
COVERAGE_FLOOR ?= 80
# Targets run the venv's tools; a cluster started here runs jobs' `python` from the venv too.
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Ray's CLI and SDK read ~/.ray/auth_token only in token mode (on by default for new clusters).
export RAY_AUTH_MODE ?= token
# Ray's high-throughput Serve mode for the clusters started here (serve/throughput.py): HAProxy
# on port 8000 (stats on 8404, metrics on 9101, all on 127.0.0.1: serve/laptop_env.py) in place
# of Serve's Python proxy. 0 turns it off.
export RAY_SERVE_ENABLE_HA_PROXY ?= 1
export RAY_SERVE_THROUGHPUT_OPTIMIZED ?= 1
export RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S ?= 30

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

# --- environment -------------------------------------------------------------------------------
$(STAMP): requirements-dev.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	@rm -f $(VENV)/.installed-* && touch $@

.PHONY: venv
venv: $(STAMP) ## create .venv from the lock file (only when the lock changed)

.PHONY: lock
lock: $(STAMP) ## re-resolve requirements.lock and requirements-dev.lock from pyproject.toml
	$(BIN)/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links \
		-P torch==2.14.1 -P torchvision==0.29.1 -o requirements.lock pyproject.toml
	$(BIN)/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links \
		-P torch==2.14.1 -P torchvision==0.29.1 --extra dev -o requirements-dev.lock pyproject.toml

# --- quality gates ------------------------------------------------------------------------------
.PHONY: lint
lint: $(STAMP) ## ruff (lint + format check), mypy, bandit
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/bandit -q -c pyproject.toml -r app jobs serve cluster -ll

.PHONY: format
format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# What benchmarks/gpu_run.sh installs on a GPU machine without network (Python 3.12 there).
GPU_WHEELS := pydantic pydantic-core annotated-types typing-extensions typing-inspection pyyaml \
	numpy safetensors pytest pluggy iniconfig packaging pygments
.PHONY: gpu-wheels
gpu-wheels: ## download the wheels benchmarks/gpu_run.sh needs into .gpu-wheels/
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .gpu-wheels \
		$(shell grep -E "^($(subst $(eval) ,|,$(GPU_WHEELS)))==" requirements-dev.lock)

.PHONY: security
security: $(STAMP) ## bandit on the code, pip-audit on the locked dependencies
	$(BIN)/bandit -q -c pyproject.toml -r app jobs serve cluster -ll
	$(BIN)/pip-audit --requirement requirements.lock --no-deps --disable-pip --progress-spinner off

# --- benchmarks ---------------------------------------------------------------------------------
.PHONY: bench
bench: $(STAMP) ## quick paired benchmarks: one table of every ratio with its spread (results/bench.jsonl)
	@run=$$(date -u +%Y%m%dT%H%M%S); export BENCH_RUN=$$run; \
	$(PY) benchmarks/paired.py --self-check --rounds 6 && \
	$(PY) benchmarks/train_overhead.py --quick && \
	$(PY) benchmarks/serve_load.py --quick && \
	$(PY) benchmarks/batch_predict.py --quick && \
	$(PY) benchmarks/tune_overhead.py --overhead-rounds 2 --trials 2 --epochs 3 && \
	$(PY) benchmarks/paired.py --table $$run

# --- tests --------------------------------------------------------------------------------------
.PHONY: test
test: $(STAMP) cluster-tools ## the whole suite: unit, integration, e2e (starts and stops its services)
	$(PY) -m pytest -m "not gpu" --cov --cov-report=term --cov-report=xml
	$(PY) -m coverage report --include='app/*' --fail-under=$(COVERAGE_FLOOR) --skip-covered

.PHONY: test-unit
test-unit: $(STAMP) ## unit tests only (seconds, no services)
	$(PY) -m pytest tests/unit

# --- running the platform locally ---------------------------------------------------------------
.PHONY: demo
demo: $(STAMP) ## the whole path on digits: sweep -> register -> promote -> serve -> classify over HTTP
	PY=$(PY) cluster/scripts/demo.sh

.PHONY: demo-down
demo-down: ## stop what `make demo` started (Serve app, its Ray cluster only, MLflow server)
	@PY=$(PY) cluster/scripts/demo.sh down

.PHONY: train
train: $(STAMP) ## train one model on DATASET with MODEL, registered @challenger (no cluster needed)
	$(PY) jobs/train.py --dataset $(DATASET) --model $(MODEL) --epochs $(EPOCHS) \
		--num-workers $(WORKERS) --register-as $(MODEL_NAME) --alias challenger \
		--results-json results/train.json

.PHONY: tune-quick
tune-quick: $(STAMP) ## a quick sweep on digits: 4 trials, ASHA + HyperOpt, best registered @challenger
	$(PY) jobs/tune.py --dataset digits --model $(MODEL) --num-samples 4 --max-concurrent 2 \
		--epochs 4 --scheduler asha --search hyperopt --register-as $(MODEL_NAME) \
		--results-json results/tune.json

.PHONY: tune-extensive
tune-extensive: $(STAMP) ## the 100-trial sweep (size the cluster: trials run as the CPUs/GPUs allow)
	$(PY) jobs/tune.py --dataset $(DATASET) --model $(MODEL) --num-samples 100 \
		--epochs $(EPOCHS) --scheduler asha --search hyperopt --register-as $(MODEL_NAME) \
		--results-json results/tune-extensive.json

.PHONY: evaluate
evaluate: $(STAMP) ## evaluate models:/$(MODEL_NAME)@challenger on its test split, with checks
	$(PY) jobs/evaluate.py --model-uri models:/$(MODEL_NAME)@challenger \
		--results-json results/evaluate.json

.PHONY: promote
promote: $(STAMP) ## move @champion to @challenger if it is at least as good
	$(PY) jobs/promote.py --model-name $(MODEL_NAME) --from challenger --to champion \
		--results-json results/promote.json

.PHONY: predict
predict: $(STAMP) ## score INPUT (folder, s3:// prefix, list file) with models:/$(MODEL_NAME)@champion into OUTPUT
	$(PY) jobs/predict.py --model-uri $(or $(MODEL_URI),models:/$(MODEL_NAME)@champion) \
		--input $(INPUT) --output $(OUTPUT) --results-json results/predict.json

.PHONY: cost-report
cost-report: $(STAMP) ## what runs cost by experiment, model, month: make cost-report [EXPERIMENT=...] [SINCE=YYYY-MM]
	$(PY) -m app.cost.report $(foreach name,$(EXPERIMENT),--experiment '$(name)') \
		$(if $(SINCE),--since $(SINCE))

.PHONY: provenance
provenance: $(STAMP) ## what a model cost and what it was made from: make provenance [MODEL_URI=models:/name@alias]
	$(PY) -m app.provenance $(or $(MODEL_URI),models:/$(MODEL_NAME)@champion)

.PHONY: mlflow-ui
mlflow-ui: $(STAMP) ## MLflow UI + tracking server on a local SQLite store (foreground)
	@$(CHECK_PORTS) MLFLOW_PORT=$(MLFLOW_PORT)
	$(BIN)/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) \
		--backend-store-uri sqlite:///mlflow.db --serve-artifacts --artifacts-destination mlartifacts

.PHONY: ray-up
ray-up: $(STAMP) ## start a local Ray head (dashboard, Serve, HAProxy on 127.0.0.1) logging to MLFLOW_TRACKING_URI
	@if [ -f $(RAY_RECORD) ]; then \
		echo "error: a cluster of make ray-up is recorded in $(RAY_RECORD): make ray-down first"; \
		exit 1; fi
	@$(CHECK_PORTS) RAY_PORT=$(RAY_PORT) DASHBOARD_PORT=$(DASHBOARD_PORT) \
		RAY_CLIENT_PORT=$(RAY_CLIENT_PORT) DASHBOARD_AGENT_PORT=$(DASHBOARD_AGENT_PORT)
	@# A token-auth head needs ~/.ray/auth_token; --generate keeps an existing one (stdout: the token).
	$(BIN)/ray get-auth-token --generate >/dev/null
	@# HAProxy's files in a folder of this user's alone, stats and metrics on 127.0.0.1. A
	@# session of its own (setsid): ray-down ends this cluster's processes and no others.
	haproxy_env="$$($(PY) -m serve.laptop_env)" && eval "$$haproxy_env" && \
		MLFLOW_TRACKING_URI=$(MLFLOW_TRACKING_URI) setsid -w $(BIN)/ray start --head \
		--port $(RAY_PORT) --dashboard-host 127.0.0.1 --dashboard-port $(DASHBOARD_PORT) \
		--ray-client-server-port $(RAY_CLIENT_PORT) \
		--dashboard-agent-listen-port $(DASHBOARD_AGENT_PORT)
	@$(PY) -m cluster.local_ports record-ray $(RAY_PORT) $(RAY_RECORD)

.PHONY: ray-down
ray-down: ## stop the local Ray cluster of `make ray-up` (other Ray clusters keep running)
	@if [ -f $(RAY_RECORD) ]; then $(PY) -m cluster.local_ports stop-ray $(RAY_RECORD); \
	else echo "no cluster of make ray-up recorded in $(RAY_RECORD); nothing stopped"; fi

.PHONY: submit-train
submit-train: $(STAMP) ## submit jobs/train.py to the running cluster as a Ray Job
	$(BIN)/ray job submit --address $(RAY_DASHBOARD) --runtime-env runtime_env.yaml \
		--working-dir . -- python jobs/train.py --dataset $(DATASET) --model $(MODEL) \
		--epochs $(EPOCHS) --num-workers $(WORKERS) --register-as $(MODEL_NAME)

.PHONY: cost-baseline
cost-baseline: $(STAMP) ## the always-on AWS cost a month from the Terraform defaults (TFVARS=file to override)
	$(PY) -m cluster.terraform.baseline_cost $(if $(TFVARS),--tfvars $(TFVARS))

.PHONY: clean
clean: ## remove caches and local run outputs (keeps .venv, data/ and mlflow.db)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .coverage coverage.xml results

include cluster/mlflow/mlflow.mk
include cluster/cluster.mk
include serve/serve.mk
