#!/usr/bin/env bash
# 04: the MLflow users of users.conf with their permissions (basic auth: READ / EDIT / MANAGE per
# experiment and registered model). Talks to the server through `kubectl port-forward`, with the
# project's users tool (python -m cluster.mlflow.users, the one `make mlflow-users` runs and the
# tests run against a real MLflow server): this script only says who gets what.
# Idempotent: existing users keep their passwords, permissions are created or updated.
# Passwords never reach a command line: the tool reads them from its environment.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${BASH_SOURCE[0]%/*}/lib.sh"
parse_args "Creates the MLflow users of users.conf and grants their permissions." "$@"
require_tools kubectl jq openssl base64 "${PYTHON}"
USERS_CONF="${SETUP_DIR}/users.conf"
PIPELINES="${KUBERAY_DIR}/pipelines.yaml"
LOCAL_PORT="${MLFLOW_LOCAL_PORT:-15000}"

admin_password="$(capture admin_password secret_value "${MLFLOW_NAMESPACE}" mlflow-admin admin-password)"

port_forward "${MLFLOW_NAMESPACE}" svc/mlflow "${LOCAL_PORT}" 5000

# The experiments and registered models that the platform's jobs write to.
mapfile -t experiments < <(grep -oE -- '--experiment [^ ]+' "${PIPELINES}" | cut -d' ' -f2 | sort -u)
mapfile -t models < <(grep -oE -- '--register-as [^ ]+' "${PIPELINES}" | cut -d' ' -f2 | sort -u)
# evaluate.py and promote.py log their runs here (app/evaluate.py EVAL_EXPERIMENT).
experiments+=(model-evaluation)

# The users file of cluster/mlflow/users.py, as JSON (YAML's subset): each user's password in an
# environment variable of its own, exported to this script's children, never in an argument.
experiments_json="$(jq -cn '$ARGS.positional' --args "${experiments[@]}")"
models_json="$(jq -cn '$ARGS.positional' --args "${models[@]}")"
declare -A passwords=()
users="[]"
n=0
# The Ray pods' users: their passwords are in the Secrets 02-cluster.sh made.
declare -A pod_secrets=(
  [ray-jobs]=rayvision-mlflow-client
  [ray-promote]=rayvision-mlflow-promoter
  [ray-serve]=rayvision-mlflow-serve
)
while read -r user role models_role; do
  [[ -z "${user}" || "${user}" == \#* ]] && continue
  models_role="${models_role:-${role}}"
  log "user ${user}: ${role} on experiments, ${models_role} on registered models"
  n=$((n + 1))
  if [[ -n "${pod_secrets[${user}]:-}" ]]; then
    password="$(capture password secret_value "${RAY_NAMESPACE}" "${pod_secrets[${user}]}" \
      MLFLOW_TRACKING_PASSWORD)"
  else
    password="$(random_or_existing "${MLFLOW_NAMESPACE}" mlflow-users "${user}")"
    passwords["${user}"]="${password}"
  fi
  export "MLFLOW_USER_PASSWORD_${n}=${password}"
  users="$(jq -c --arg u "${user}" --arg r "${role}" --arg mr "${models_role}" \
    --arg env "MLFLOW_USER_PASSWORD_${n}" \
    --argjson experiments "${experiments_json}" --argjson models "${models_json}" \
    '. + [{username: $u, password_env: $env} + (if $r == "admin" then {admin: true} else
      {experiments: ($experiments | map({(.): $r}) | add // {}),
       registered_models: ($models | map({(.): $mr}) | add // {})} end)]' <<<"${users}")"
done <"${USERS_CONF}"

spec="$(mktemp)"
trap 'rm -f "${spec}"; kill "${PORT_FORWARD_PIDS[@]}" 2>/dev/null || true' EXIT
jq -n --argjson users "${users}" '{users: $users}' >"${spec}"
if ((DRY_RUN)); then
  jq -c '.users[] | del(.password_env)' "${spec}" >&2
fi
PYTHONPATH="${REPO_ROOT}" MLFLOW_TRACKING_URI="http://127.0.0.1:${LOCAL_PORT}" \
  MLFLOW_ADMIN_USERNAME=admin MLFLOW_ADMIN_PASSWORD="${admin_password}" \
  run "${PYTHON}" -m cluster.mlflow.users --file "${spec}"

secret_pairs=()
for user in "${!passwords[@]}"; do
  secret_pairs+=("${user}=${passwords[${user}]}")
done
apply_secret "${MLFLOW_NAMESPACE}" mlflow-users "${secret_pairs[@]}"
log "done: passwords in the Secret ${MLFLOW_NAMESPACE}/mlflow-users; next, 05-connection-test.sh"
