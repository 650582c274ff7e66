#!/usr/bin/env bash
# Restore a backup made by backup-mlflow.sh: the store into an empty (or absent) database, then
# the artifacts back under the artifacts destination. Stop the MLflow server first and start it
# again afterwards (it applies any newer schema migrations on start).
#
# Usage: cluster/scripts/restore-mlflow.sh BACKUP_DIR
# Store and bucket: as for backup-mlflow.sh.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
py=${PY:-$root/.venv/bin/python}
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

src=${1:?usage: restore-mlflow.sh BACKUP_DIR}
if [[ ! -f "$src/mlflow.dump" ]]; then
    echo "error: $src/mlflow.dump not found (not a backup-mlflow.sh directory?)" >&2
    exit 1
fi

connection=$("$py" -m cluster.mlflow.stack env)
eval "$connection"

"$py" -m cluster.mlflow.stack create-db --empty
pg_restore --no-owner --no-privileges --exit-on-error --single-transaction \
    --dbname="$PGDATABASE" "$src/mlflow.dump"
if [[ -d "$src/artifacts" ]]; then
    "$py" -m cluster.mlflow.stack artifacts upload "$src/artifacts"
fi
echo "restored $src into database $PGDATABASE and $MLFLOW_ARTIFACTS_DESTINATION"
