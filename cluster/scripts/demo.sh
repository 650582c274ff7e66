#!/usr/bin/env bash
# The whole path a new user should see, on the offline digits dataset:
#   MLflow server -> local Ray cluster -> sweep (Ray Job) -> best model registered @challenger
#   -> gated promotion to @champion -> Ray Serve app -> a digit classified over HTTP.
# Run through `make demo` (which creates .venv first); `make demo-down` (this script with
# `down`) stops what it started, and only that: other Ray clusters on the machine keep running.
# Ports: a taken default is replaced by a free one (said, and the URLs printed); a port set in
# the environment (MLFLOW_PORT, RAY_PORT, DASHBOARD_PORT, RAY_CLIENT_PORT, DASHBOARD_AGENT_PORT,
# SERVE_PORT, HAPROXY_STATS_PORT, HAPROXY_METRICS_PORT) is used as it is, or refused when taken.
# VERBOSE=1 shows Ray's and MLflow's full console output in the sweep's log.
set -euo pipefail

cd "$(dirname "$0")/../.."
: "${PY:=.venv/bin/python}"
BIN="$(cd "$(dirname "$PY")" && pwd)"
export PATH="$BIN:$PATH"
export RAY_AUTH_MODE=token

MODEL_NAME="${MODEL_NAME:-digits-classifier}"
RUN_DIR=results/demo
PORTS="$RUN_DIR/ports.env"
RAY_RECORD="$RUN_DIR/ray.json"

step() { printf '\n==> %s\n' "$*"; }

wait_http() { # url seconds what [any]: any answer will do (the dashboard's API wants a token)
  local deadline=$((SECONDS + $2)) fail=-f
  [ "${4:-}" = any ] && fail=
  until curl -s $fail -o /dev/null "$1"; do
    if ((SECONDS >= deadline)); then
      echo "error: $3 did not answer at $1 within $2 s" >&2
      return 1
    fi
    sleep 1
  done
}

down() {
  if [ -f "$PORTS" ]; then
    # shellcheck source=/dev/null
    . "$PORTS"
    make --no-print-directory serve-down SERVE_RUN_DIR="$RUN_DIR/serve" \
      RAY_DASHBOARD="http://127.0.0.1:${DASHBOARD_PORT}" >/dev/null 2>&1 || true
  fi
  if [ -f "$RAY_RECORD" ]; then
    "$PY" -m cluster.local_ports stop-ray "$RAY_RECORD"
  fi
  if [ -f "$RUN_DIR/mlflow.pid" ]; then
    kill -- -"$(cat "$RUN_DIR/mlflow.pid")" 2>/dev/null || true
    rm -f "$RUN_DIR/mlflow.pid"
    echo "stopped the MLflow server"
  fi
  rm -f "$PORTS"
}

if [ "${1:-}" = down ]; then
  down
  exit 0
fi

if [ -f "$RAY_RECORD" ] || [ -f "$RUN_DIR/mlflow.pid" ]; then
  echo "error: a demo is already running here (see $RUN_DIR): run make demo-down first" >&2
  exit 1
fi
mkdir -p "$RUN_DIR"
# Free ports for everything the demo starts; stops with a one-line error on a taken port
# that the environment asked for.
ports="$("$PY" -m cluster.local_ports pick MLFLOW_PORT="${MLFLOW_PORT:-5000}" \
  RAY_PORT="${RAY_PORT:-6379}" DASHBOARD_PORT="${DASHBOARD_PORT:-8265}" \
  RAY_CLIENT_PORT="${RAY_CLIENT_PORT:-10001}" DASHBOARD_AGENT_PORT="${DASHBOARD_AGENT_PORT:-52365}" \
  SERVE_PORT="${SERVE_PORT:-8000}" HAPROXY_STATS_PORT="${HAPROXY_STATS_PORT:-8404}" \
  HAPROXY_METRICS_PORT="${HAPROXY_METRICS_PORT:-9101}")"
printf '%s\n' "$ports" >"$PORTS"
# shellcheck source=/dev/null
. "$PORTS"
# Whatever fails from here on, what was started is stopped again.
on_exit() {
  local status=$?
  if [ "$status" -ne 0 ]; then
    echo "demo failed; stopping what it started" >&2
    down >&2
  fi
}
trap on_exit EXIT

export MLFLOW_TRACKING_URI="http://127.0.0.1:${MLFLOW_PORT}"
DASHBOARD="http://127.0.0.1:${DASHBOARD_PORT}"
SERVE_URL="http://127.0.0.1:${SERVE_PORT}"
# Every process of the cluster knows which cluster it is in, even when others run here.
export RAY_ADDRESS="127.0.0.1:${RAY_PORT}"
# Each trial's epoch lines shown, not folded into "[repeated 2x across cluster]".
export RAY_DEDUP_LOGS=0

step "MLflow tracking server on ${MLFLOW_TRACKING_URI} (SQLite store ./mlflow.db, artifacts ./mlartifacts)"
setsid nohup mlflow server --host 127.0.0.1 --port "$MLFLOW_PORT" \
  --backend-store-uri "sqlite:///$PWD/mlflow.db" \
  --serve-artifacts --artifacts-destination "$PWD/mlartifacts" \
  >"$RUN_DIR/mlflow.log" 2>&1 &
echo $! >"$RUN_DIR/mlflow.pid"
wait_http "${MLFLOW_TRACKING_URI}/health" 120 "the MLflow server (log $RUN_DIR/mlflow.log)"

step "Local Ray cluster on ${RAY_ADDRESS}, dashboard ${DASHBOARD} (token auth on)"
ray get-auth-token --generate >/dev/null # a token-auth head needs ~/.ray/auth_token
# HAProxy's files in a folder of this user's and this cluster's alone, its stats and metrics
# on 127.0.0.1 and the ports chosen above.
haproxy_env="$("$PY" -m serve.laptop_env --dir "/tmp/rvdemo-${RAY_PORT}")"
eval "$haproxy_env"
export RAY_SERVE_HAPROXY_STATS_PORT="$HAPROXY_STATS_PORT"
export RAY_SERVE_HAPROXY_METRICS_PORT="$HAPROXY_METRICS_PORT"
# A session of its own (setsid): every process of this cluster keeps its id, and
# `make demo-down` ends those processes only.
setsid -w ray start --head --port "$RAY_PORT" --dashboard-host 127.0.0.1 \
  --dashboard-port "$DASHBOARD_PORT" --ray-client-server-port "$RAY_CLIENT_PORT" \
  --dashboard-agent-listen-port "$DASHBOARD_AGENT_PORT" --disable-usage-stats \
  >"$RUN_DIR/ray-start.log" 2>&1 || {
  echo "error: ray start failed; last lines of $RUN_DIR/ray-start.log:" >&2
  tail -n 5 "$RUN_DIR/ray-start.log" >&2
  exit 1
}
"$PY" -m cluster.local_ports record-ray "$RAY_PORT" "$RAY_RECORD"
wait_http "$DASHBOARD/api/version" 60 "the Ray dashboard" any

step "Sweep: 4 trials, ASHA + HyperOpt, submitted as a Ray Job"
ray job submit --address "$DASHBOARD" --runtime-env runtime_env.yaml --working-dir . -- \
  RAYVISION_VERBOSE="${VERBOSE:-0}" \
  python jobs/tune.py --dataset digits --model resnet18 --num-samples 4 --max-concurrent 2 \
  --epochs 5 --scheduler asha --search hyperopt --register-as "$MODEL_NAME" \
  --results-json "$PWD/$RUN_DIR/tune.json"

step "Promotion gated by evaluation: @challenger -> @champion"
"$PY" jobs/promote.py --model-name "$MODEL_NAME" --from challenger --to champion \
  --results-json "$RUN_DIR/promote.json"

step "Ray Serve: the classifier serving models:/${MODEL_NAME}@champion on ${SERVE_URL}"
# serve/config.yaml with the port chosen above.
sed "s/^  port: 8000\$/  port: ${SERVE_PORT}/" serve/config.yaml >"$RUN_DIR/serve-config.yaml"
make --no-print-directory serve-up SERVE_RAY_ADDRESS="$RAY_ADDRESS" RAY_DASHBOARD="$DASHBOARD" \
  SERVE_CONFIG="$RUN_DIR/serve-config.yaml" SERVE_PORT="$SERVE_PORT" SERVE_RUN_DIR="$RUN_DIR/serve"
make --no-print-directory serve-smoke SERVE_URL="$SERVE_URL"

cat <<EOF

Done. Open:
  MLflow UI        ${MLFLOW_TRACKING_URI}   (experiment image-classification, model ${MODEL_NAME})
  Ray Dashboard    ${DASHBOARD}   (Jobs, Train, Serve tabs)
  Serve API docs   ${SERVE_URL}/docs
Try:  curl -F file=@digit.png ${SERVE_URL}/predict
Stop: make demo-down
EOF
