#!/usr/bin/env bash
# The whole path a new user should see, on the offline digits dataset:
#   MLflow server -> local Ray cluster -> sweep (Ray Job) -> best model registered @challenger
#   -> gated promotion to @champion -> Ray Serve app -> a digit classified over HTTP.
# Run through `make demo` (which creates .venv first); `make demo-down` stops what it started.
set -euo pipefail

cd "$(dirname "$0")/../.."
: "${PY:=.venv/bin/python}"
BIN="$(cd "$(dirname "$PY")" && pwd)"
export PATH="$BIN:$PATH"
export RAY_AUTH_MODE=token

MLFLOW_PORT="${MLFLOW_PORT:-5000}"
RAY_PORT="${RAY_PORT:-6379}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
MODEL_NAME="${MODEL_NAME:-digits-classifier}"
RUN_DIR=results/demo
export MLFLOW_TRACKING_URI="http://127.0.0.1:${MLFLOW_PORT}"
DASHBOARD="http://127.0.0.1:${DASHBOARD_PORT}"
# Every process of the cluster knows which cluster it is in, even when others run here.
export RAY_ADDRESS="127.0.0.1:${RAY_PORT}"
mkdir -p "$RUN_DIR"

step() { printf '\n==> %s\n' "$*"; }

wait_http() {  # url seconds what
  for _ in $(seq "$2"); do
    curl -fs "$1" >/dev/null && return 0
    sleep 1
  done
  echo "error: $3 did not answer at $1 within $2 s" >&2
  return 1
}

step "MLflow tracking server (SQLite store ./mlflow.db, artifacts ./mlartifacts)"
if ! curl -fs "${MLFLOW_TRACKING_URI}/health" >/dev/null; then
  setsid nohup mlflow server --host 127.0.0.1 --port "$MLFLOW_PORT" \
    --backend-store-uri "sqlite:///$PWD/mlflow.db" \
    --serve-artifacts --artifacts-destination "$PWD/mlartifacts" \
    >"$RUN_DIR/mlflow.log" 2>&1 &
  echo $! >"$RUN_DIR/mlflow.pid"
  wait_http "${MLFLOW_TRACKING_URI}/health" 120 "the MLflow server"
fi

step "Local Ray cluster (token auth on)"
if ! curl -fs "$DASHBOARD/api/version" -o /dev/null 2>/dev/null &&
  ! ray status --address "127.0.0.1:${RAY_PORT}" >/dev/null 2>&1; then
  ray get-auth-token --generate >/dev/null # a token-auth head needs ~/.ray/auth_token
  # HAProxy's files in a folder of this user's alone, its stats and metrics on 127.0.0.1.
  haproxy_env="$("$PY" -m serve.laptop_env)"
  eval "$haproxy_env"
  ray start --head --port "$RAY_PORT" --dashboard-host 127.0.0.1 \
    --dashboard-port "$DASHBOARD_PORT" --disable-usage-stats
  touch "$RUN_DIR/ray.started"
fi

step "Sweep: 4 trials, ASHA + HyperOpt, submitted as a Ray Job"
ray job submit --address "$DASHBOARD" --runtime-env runtime_env.yaml --working-dir . -- \
  python jobs/tune.py --dataset digits --model resnet18 --num-samples 4 --max-concurrent 2 \
  --epochs 5 --scheduler asha --search hyperopt --register-as "$MODEL_NAME" \
  --results-json "$PWD/$RUN_DIR/tune.json"

step "Promotion gated by evaluation: @challenger -> @champion"
"$PY" jobs/promote.py --model-name "$MODEL_NAME" --from challenger --to champion \
  --results-json "$RUN_DIR/promote.json"

step "Ray Serve: the classifier serving models:/${MODEL_NAME}@champion"
make --no-print-directory serve-up SERVE_RAY_ADDRESS="127.0.0.1:${RAY_PORT}" \
  RAY_DASHBOARD="$DASHBOARD"
make --no-print-directory serve-smoke

cat <<EOF

Done. Open:
  MLflow UI        ${MLFLOW_TRACKING_URI}   (experiment image-classification, model ${MODEL_NAME})
  Ray Dashboard    ${DASHBOARD}             (Jobs, Train, Serve tabs)
  Serve API docs   http://127.0.0.1:8000/docs
Try:  curl -F file=@digit.png http://127.0.0.1:8000/predict
Stop: make demo-down
EOF
