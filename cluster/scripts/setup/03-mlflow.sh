#!/usr/bin/env bash
# 03: the central MLflow tracking server (Helm chart cluster/charts/mlflow): its image in ECR, the
# admin credentials as a Kubernetes Secret, the release, and DNS names for the ALB.
# Idempotent: the image is built once per commit, secrets keep their values across reruns, helm
# upgrade --install converges, DNS records are UPSERTed.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${BASH_SOURCE[0]%/*}/lib.sh"
parse_args "Installs or upgrades the MLflow tracking server and its HTTPS endpoint." "$@"
require_tools aws terraform kubectl helm docker git jq openssl base64
require_region
require_aws_credentials

mlflow_repo="$(tf_output mlflow_image_repository)"
mlflow_host="$(tf_output mlflow_host)"
serve_host="$(tf_output serve_host)"
commit="$(capture commit git -C "${REPO_ROOT}" rev-parse --short HEAD)"
mlflow_image_tag="3.17.2-${commit}"

log "the MLflow image"
build_and_push "${mlflow_repo}:${mlflow_image_tag}" cluster/docker/mlflow.Dockerfile

log "namespace ${MLFLOW_NAMESPACE}: credentials"
apply_generated kubectl create namespace "${MLFLOW_NAMESPACE}"
# The database password stays in Secrets Manager, where RDS rotates it: the chart's sidecar reads
# it with the pods' IAM role (database.passwordSecretArn), so no copy of it is made here.
apply_secret "${MLFLOW_NAMESPACE}" mlflow-admin admin-username=admin \
  "admin-password=$(random_or_existing "${MLFLOW_NAMESPACE}" mlflow-admin admin-password)" \
  "flask-secret-key=$(random_or_existing "${MLFLOW_NAMESPACE}" mlflow-admin flask-secret-key)"

log "the MLflow release"
run helm upgrade --install mlflow "${REPO_ROOT}/cluster/charts/mlflow" \
  --namespace "${MLFLOW_NAMESPACE}" --wait --timeout 10m \
  --set image.repository="${mlflow_repo}" --set image.tag="${mlflow_image_tag}" \
  --set image.digest="$(image_digest "${mlflow_repo}:${mlflow_image_tag}")" \
  --set serviceAccount.roleArn="$(tf_map_output irsa_role_arns mlflow)" \
  --set artifactsDestination="$(tf_output mlflow_artifacts_uri)" \
  --set database.host="$(tf_output rds_endpoint)" \
  --set database.passwordSecretArn="$(tf_output rds_master_secret_arn)" \
  --set ingress.host="${mlflow_host}" \
  --set ingress.certificateArn="$(tf_output certificate_arn)" \
  --set ingress.wafAclArn="$(tf_output waf_acl_arn)"

log "DNS: ${mlflow_host} and ${serve_host}, each to its own load balancer"
# alb_hostname NAMESPACE INGRESS: the DNS name of the ALB the controller made for that ingress.
alb_hostname() {
  kubectl -n "$1" get ingress "$2" -o 'jsonpath={.status.loadBalancer.ingress[0].hostname}'
}
mlflow_alb_ready() { [[ -n "$(alb_hostname "${MLFLOW_NAMESPACE}" mlflow)" ]]; }
serve_alb_ready() { [[ -n "$(alb_hostname "${RAY_NAMESPACE}" classifier)" ]]; }
wait_until 600 "the load balancer of the MLflow ingress" mlflow_alb_ready
wait_until 600 "the load balancer of the Serve ingress" serve_alb_ready
mlflow_alb="$(capture mlflow_alb alb_hostname "${MLFLOW_NAMESPACE}" mlflow)"
serve_alb="$(capture serve_alb alb_hostname "${RAY_NAMESPACE}" classifier)"
changes="$(jq -cn --arg a "${mlflow_host}" --arg a_alb "${mlflow_alb}" \
  --arg b "${serve_host}" --arg b_alb "${serve_alb}" '{Changes: [
  {Action: "UPSERT", ResourceRecordSet: {Name: $a, Type: "CNAME", TTL: 300, ResourceRecords: [{Value: $a_alb}]}},
  {Action: "UPSERT", ResourceRecordSet: {Name: $b, Type: "CNAME", TTL: 300, ResourceRecords: [{Value: $b_alb}]}}
]}')"
run aws route53 change-resource-record-sets --hosted-zone-id "$(tf_output hosted_zone_id)" \
  --change-batch "${changes}"
log "done: MLflow at https://${mlflow_host}; next, 04-users.sh"
