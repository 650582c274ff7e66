#!/usr/bin/env bash
# Scheduled model lifecycle step, run on the cluster by the evaluate-promote Ray job:
# evaluate the registered challenger on the test set (its run, tables and behavioural checks),
# then promote it to champion; promote.py itself refuses a challenger that scores worse than the
# champion. promote.py runs only when the evaluation passed (set -e).
# Usage: evaluate-promote.sh MODEL_NAME DATASET
set -euo pipefail

model="${1:?usage: evaluate-promote.sh MODEL_NAME DATASET}"
dataset="${2:?usage: evaluate-promote.sh MODEL_NAME DATASET}"

python jobs/evaluate.py --model-uri "models:/${model}@challenger" --dataset "${dataset}" \
  --data-dir "${RAYVISION_DATA_DIR}" --results-json /tmp/evaluate.results.json
# Moving @champion needs the promotion step's own MLflow user (MANAGE on the model; the jobs'
# user may only set @challenger): on the cluster, the driver pods hold its login as files.
promoter="${RAYVISION_PROMOTER_LOGIN:-/var/run/secrets/rayvision/mlflow-promoter}"
if [[ -r "${promoter}/MLFLOW_TRACKING_PASSWORD" ]]; then
  MLFLOW_TRACKING_USERNAME="$(<"${promoter}/MLFLOW_TRACKING_USERNAME")"
  MLFLOW_TRACKING_PASSWORD="$(<"${promoter}/MLFLOW_TRACKING_PASSWORD")"
  export MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD
fi
python jobs/promote.py --model-name "${model}" --from challenger --to champion \
  --data-dir "${RAYVISION_DATA_DIR}" --results-json /tmp/promote.results.json
