# The classifier service on the running local cluster (`make ray-up`). Included from the root
# Makefile, which defines PY, BIN, STAMP, RAY_DASHBOARD and exports RAY_AUTH_MODE=token.
# The replicas find MLflow through the cluster's MLFLOW_TRACKING_URI (set by `make ray-up`).
SERVE_CONFIG ?= serve/config.yaml
# The port of http_options in SERVE_CONFIG (serve-up checks it is free first).
SERVE_PORT ?= 8000
SERVE_URL ?= http://127.0.0.1:$(SERVE_PORT)
SERVE_RUN_DIR ?= results/serve
SERVE_WAIT_S ?= 180
# Which cluster `serve run` joins: the local one by default, or host:port when several run.
SERVE_RAY_ADDRESS ?= auto
SERVE_PID := $(SERVE_RUN_DIR)/serve-run.pid
SERVE_LOG := $(SERVE_RUN_DIR)/serve-run.log

.PHONY: serve-up serve-down serve-smoke

serve-up: $(STAMP) ## start the classifier service on the running cluster (background serve run)
	@mkdir -p $(SERVE_RUN_DIR)
	@if [ -f $(SERVE_PID) ] && kill -0 "$$(cat $(SERVE_PID))" 2>/dev/null; then \
		echo "serve run already running (pid $$(cat $(SERVE_PID))): make serve-down first"; \
		exit 1; fi
	@$(PY) -m cluster.local_ports check SERVE_PORT=$(SERVE_PORT)
	nohup $(BIN)/serve run --address $(SERVE_RAY_ADDRESS) --working-dir . $(SERVE_CONFIG) \
		> $(SERVE_LOG) 2>&1 & echo $$! > $(SERVE_PID)
	@for _ in $$(seq $(SERVE_WAIT_S)); do \
		if curl -fs $(SERVE_URL)/health > /dev/null; then \
			echo "serving at $(SERVE_URL)  (API docs $(SERVE_URL)/docs, log $(SERVE_LOG))"; \
			exit 0; fi; \
		if ! kill -0 "$$(cat $(SERVE_PID))" 2>/dev/null; then \
			echo "serve run exited; last lines of $(SERVE_LOG):"; tail -n 30 $(SERVE_LOG); \
			exit 1; fi; \
		sleep 1; done; \
	echo "no healthy service after $(SERVE_WAIT_S)s; see $(SERVE_LOG) and 'serve status'"; exit 1

serve-down: ## stop the classifier service (serve shutdown) and its serve run process
	-$(BIN)/serve shutdown -y --address $(RAY_DASHBOARD)
	@if [ -f $(SERVE_PID) ]; then kill "$$(cat $(SERVE_PID))" 2>/dev/null || true; \
		rm -f $(SERVE_PID); fi

serve-smoke: $(STAMP) ## classify a held-out digit (PNG from the digits test split) over HTTP
	$(PY) serve/client.py --url $(SERVE_URL) --smoke
