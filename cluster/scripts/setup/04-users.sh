#!/usr/bin/env bash
# 04: the MLflow users of users.conf with their permissions (basic auth: READ / EDIT / MANAGE per
# experiment and registered model). Talks to the server through `kubectl port-forward`.
# Idempotent: existing users keep their passwords, permissions are created or updated.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${BASH_SOURCE[0]%/*}/lib.sh"
parse_args "Creates the MLflow users of users.conf and grants their permissions." "$@"
require_tools kubectl curl jq openssl base64
USERS_CONF="${SETUP_DIR}/users.conf"
PIPELINES="${KUBERAY_DIR}/pipelines.yaml"
LOCAL_PORT="${MLFLOW_LOCAL_PORT:-15000}"
API="http://127.0.0.1:${LOCAL_PORT}/api/2.0/mlflow"

admin_password="$(capture admin_password secret_value "${MLFLOW_NAMESPACE}" mlflow-admin admin-password)"

# mlflow_api METHOD PATH [JSON]: one authenticated call as the admin; fails on a 4xx/5xx answer.
# The password reaches curl through a file descriptor, not its arguments.
mlflow_api() {
  local method="$1" path="$2" body="${3:-}"
  if ((DRY_RUN)); then
    show curl -X "${method}" "${API}/${path}" ${body:+--data "${body//\"password\":\"*\"/\"password\":\"***\"}"}
    return 0
  fi
  curl -sS --fail-with-body -X "${method}" "${API}/${path}" \
    --netrc-file <(printf 'machine 127.0.0.1 login admin password %s\n' "${admin_password}") \
    -H 'Content-Type: application/json' ${body:+--data "${body}"}
}

# quietly CMD...: CMD without its output (an expected "already exists" included), shown under
# --dry-run.
quietly() {
  if ((DRY_RUN)); then
    "$@"
  else
    "$@" >/dev/null 2>&1
  fi
}

# grant KIND RESOURCE_FIELD RESOURCE USER PERMISSION (KIND: experiments | registered-models)
grant() {
  local json
  json="$(jq -cn --arg f "$2" --arg r "$3" --arg u "$4" --arg p "$5" \
    '{($f): $r, username: $u, permission: $p}')"
  quietly mlflow_api POST "$1/permissions/create" "${json}" ||
    mlflow_api PATCH "$1/permissions/update" "${json}" >/dev/null
}

port_forward "${MLFLOW_NAMESPACE}" svc/mlflow "${LOCAL_PORT}" 5000

# The experiments and registered models that the platform's jobs write to.
mapfile -t experiments < <(grep -oE -- '--experiment [^ ]+' "${PIPELINES}" | cut -d' ' -f2 | sort -u)
mapfile -t models < <(grep -oE -- '--register-as [^ ]+' "${PIPELINES}" | cut -d' ' -f2 | sort -u)
experiment_id() {
  mlflow_api GET "experiments/get-by-name?experiment_name=$1" | jq -r .experiment.experiment_id
}
experiment_ids=()
for name in "${experiments[@]}"; do
  quietly mlflow_api POST experiments/create "$(jq -cn --arg n "${name}" '{name: $n}')" || true
  experiment_ids+=("$(capture "id of ${name}" experiment_id "${name}")")
done
for name in "${models[@]}"; do
  quietly mlflow_api POST registered-models/create "$(jq -cn --arg n "${name}" '{name: $n}')" || true
done

declare -A passwords=()
while read -r user role; do
  [[ -z "${user}" || "${user}" == \#* ]] && continue
  log "user ${user}: ${role}"
  if [[ "${user}" == ray-jobs ]]; then
    password="$(capture password secret_value "${RAY_NAMESPACE}" rayvision-mlflow-client \
      MLFLOW_TRACKING_PASSWORD)"
  else
    password="$(random_or_existing "${MLFLOW_NAMESPACE}" mlflow-users "${user}")"
    passwords["${user}"]="${password}"
  fi
  if ((DRY_RUN)) || ! quietly mlflow_api GET "users/get?username=${user}"; then
    mlflow_api POST users/create \
      "$(jq -cn --arg u "${user}" --arg p "${password}" '{username: $u, password: $p}')" >/dev/null
  fi
  if [[ "${role}" == admin ]]; then
    mlflow_api PATCH users/update-admin \
      "$(jq -cn --arg u "${user}" '{username: $u, is_admin: true}')" >/dev/null
    continue
  fi
  for id in "${experiment_ids[@]}"; do
    grant experiments experiment_id "${id}" "${user}" "${role}"
  done
  for name in "${models[@]}"; do
    grant registered-models name "${name}" "${user}" "${role}"
  done
done <"${USERS_CONF}"

secret_pairs=()
for user in "${!passwords[@]}"; do
  secret_pairs+=("${user}=${passwords[${user}]}")
done
apply_secret "${MLFLOW_NAMESPACE}" mlflow-users "${secret_pairs[@]}"
log "done: passwords in the Secret ${MLFLOW_NAMESPACE}/mlflow-users; next, 05-connection-test.sh"
