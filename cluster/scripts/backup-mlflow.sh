#!/usr/bin/env bash
# Back up the MLflow tracking server into one directory: the PostgreSQL store (pg_dump, custom
# format; experiments, runs, metrics, the registry, users and permissions) and every object under
# the artifacts destination.
#
# Usage: cluster/scripts/backup-mlflow.sh [BACKUP_DIR]   (default: backups/mlflow-<UTC time>)
# Store and bucket: those of the stack `make mlflow-up` started, else MLFLOW_BACKEND_STORE_URI,
# MLFLOW_ARTIFACTS_DESTINATION, MLFLOW_S3_ENDPOINT_URL and AWS_* from the environment.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
py=${PY:-$root/.venv/bin/python}
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

dest=${1:-backups/mlflow-$(date -u +%Y%m%dT%H%M%SZ)}
# The dump holds the users' password hashes and every artifact: readable by this user only.
umask 077
mkdir -p "$dest"
chmod 700 "$dest"
dest=$(cd "$dest" && pwd)

# PG* variables for pg_dump, plus the bucket settings (assigned first so a failure stops here).
connection=$("$py" -m cluster.mlflow.stack env)
eval "$connection"

pg_dump --format=custom --no-owner --no-privileges --file="$dest/mlflow.dump"
"$py" -m cluster.mlflow.stack artifacts download "$dest/artifacts"
echo "backup written to $dest"
