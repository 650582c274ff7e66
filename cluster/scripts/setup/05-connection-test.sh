#!/usr/bin/env bash
# 05: end-to-end connection test from an admin's machine, the way users reach the platform:
# the Ray job API with and without the cluster's token, a Ray job on the cluster, MLflow over
# with and without credentials (over HTTPS when its load balancer is internet-facing, through a
# port-forward when internal), HTTP redirected to HTTPS, and the inference endpoint.
# Read-only but for one tiny Ray job. Exit status 1 when a check fails.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${BASH_SOURCE[0]%/*}/lib.sh"
parse_args "Checks that Ray, MLflow and inference answer as users reach them." "$@"
require_tools kubectl curl ray base64
RAY_LOCAL_PORT="${RAY_LOCAL_PORT:-18265}"
# The hosts of the two ingresses.
ingress_host() {
  kubectl -n "$1" get ingress "$2" -o 'jsonpath={.spec.rules[0].host}'
}
mlflow_host="$(capture mlflow_host ingress_host "${MLFLOW_NAMESPACE}" mlflow)"
serve_host="$(capture serve_host ingress_host "${RAY_NAMESPACE}" classifier)"

log "Ray"
check "kubernetes nodes are Ready" kubectl wait --for=condition=Ready nodes --all --timeout=60s
check "RayCluster rayvision is ready" \
  kubectl -n "${RAY_NAMESPACE}" wait raycluster/rayvision --for=jsonpath='{.status.state}'=ready --timeout=120s
port_forward "${RAY_NAMESPACE}" svc/rayvision-head-svc "${RAY_LOCAL_PORT}" 8265
ray_address="http://127.0.0.1:${RAY_LOCAL_PORT}"
status_is() { [[ "$(curl -s -o /dev/null -w '%{http_code}' "${@:2}")" == "$1" ]]; }
check "job API refuses a request without the token (401)" status_is 401 "${ray_address}/api/jobs/"
RAY_AUTH_TOKEN="$(capture token secret_value "${RAY_NAMESPACE}" rayvision-ray-token auth_token)"
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN
check "ray job submit with the token runs a job on the cluster" \
  ray job submit --address "${ray_address}" -- python -c 'import ray; ray.init(); print(ray.cluster_resources())'

log "MLflow"
# An internal load balancer (the chart's default) is out of this machine's reach unless it is on
# the VPC's network: then the server itself is checked through a port-forward, and the check is
# that no internet-facing load balancer exists for it.
mlflow_scheme="$(capture mlflow_scheme kubectl -n "${MLFLOW_NAMESPACE}" get ingress mlflow \
  -o 'jsonpath={.metadata.annotations.alb\.ingress\.kubernetes\.io/scheme}')"
if [[ "${mlflow_scheme}" == internal ]]; then
  log "MLflow's load balancer is internal: checking the server through a port-forward"
  port_forward "${MLFLOW_NAMESPACE}" svc/mlflow "${MLFLOW_LOCAL_PORT:-15000}" 5000
  mlflow_url="http://127.0.0.1:${MLFLOW_LOCAL_PORT:-15000}"
  netrc_host=127.0.0.1
else
  mlflow_url="https://${mlflow_host}"
  netrc_host="${mlflow_host}"
  check "MLflow answers over HTTPS" curl -sf "${mlflow_url}/health"
  check "plain HTTP is redirected to HTTPS (301)" status_is 301 "http://${mlflow_host}/health"
fi
check "MLflow refuses an anonymous API call (401)" \
  status_is 401 "${mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
mlflow_password="$(capture password secret_value "${RAY_NAMESPACE}" rayvision-mlflow-client MLFLOW_TRACKING_PASSWORD)"
check "MLflow accepts the jobs' user" status_is 200 \
  --netrc-file <(printf 'machine %s login ray-jobs password %s\n' "${netrc_host}" "${mlflow_password}") \
  "${mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"

log "inference"
check "the Serve app answers over HTTPS (needs a champion model)" curl -sf "https://${serve_host}/health"
checks_passed
