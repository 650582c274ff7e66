#!/usr/bin/env bash
# 06: verifies the whole deployment against what this repository declares: the AWS resources'
# security and sizing, the Kubernetes objects (no drift from the rendered manifests), then the
# end-to-end connection test (05). Read-only but for 05's tiny Ray job. Exit status 1 on a failure.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${BASH_SOURCE[0]%/*}/lib.sh"
parse_args "Verifies the AWS resources, the Kubernetes objects and the connections." "$@"
require_tools aws terraform kubectl helm jq envsubst
require_region
require_aws_credentials

cluster="$(tf_output cluster_name)"
bucket="$(tf_output artifact_bucket)"

# aws_is EXPECTED QUERY CMD...: the AWS CLI call answers EXPECTED for the JMESPath QUERY.
aws_is() {
  local expected="$1" query="$2"
  shift 2
  [[ "$(aws "$@" --query "${query}" --output text)" == "${expected}" ]]
}

log "AWS"
check "EKS cluster is ACTIVE" aws_is ACTIVE cluster.status eks describe-cluster --name "${cluster}"
check "GPU node group is spot and scales 0..5" aws_is "SPOT	0	5" \
  "[nodegroup.capacityType, nodegroup.scalingConfig.minSize, nodegroup.scalingConfig.maxSize]" \
  eks describe-nodegroup --cluster-name "${cluster}" --nodegroup-name gpu-spot
check "RDS is Multi-AZ, encrypted, private" aws_is "True	True	False" \
  "DBInstances[0].[MultiAZ, StorageEncrypted, PubliclyAccessible]" \
  rds describe-db-instances --db-instance-identifier "${cluster}"
check "S3 bucket is versioned" aws_is Enabled Status s3api get-bucket-versioning --bucket "${bucket}"
check "S3 bucket blocks public access" aws_is "True	True	True	True" \
  "PublicAccessBlockConfiguration.[BlockPublicAcls, IgnorePublicAcls, BlockPublicPolicy,
   RestrictPublicBuckets]" \
  s3api get-public-access-block --bucket "${bucket}"
check "S3 bucket expires old versions" aws_is expire-old-versions "Rules[?ID=='expire-old-versions'].ID" \
  s3api get-bucket-lifecycle-configuration --bucket "${bucket}"

log "Kubernetes"
RAYVISION_IMAGE="$(capture image kubectl -n "${RAY_NAMESPACE}" get raycluster rayvision \
  -o 'jsonpath={.spec.headGroupSpec.template.spec.containers[0].image}')"
RAYVISION_RAY_ROLE_ARN="$(tf_map_output irsa_role_arns ray)"
RAYVISION_SERVE_HOST="$(tf_output serve_host)"
RAYVISION_CERT_ARN="$(tf_output certificate_arn)"
RAYVISION_WAF_ACL_ARN="$(tf_output waf_acl_arn)"
export RAYVISION_IMAGE RAYVISION_RAY_ROLE_ARN RAYVISION_SERVE_HOST RAYVISION_CERT_ARN \
  RAYVISION_WAF_ACL_ARN
no_drift() { render_manifest "$1" | kubectl diff -f -; }
for manifest in "${KUBERAY_DIR}"/{serviceaccount,rayservice,serve-ingress}.yaml \
  "${KUBERAY_DIR}"/raycronjob-*.yaml; do
  check "${manifest##*/} is deployed as in the repository" no_drift "${manifest}"
done
check "MLflow release is deployed" helm status mlflow --namespace "${MLFLOW_NAMESPACE}"
hpa_bounds() {
  [[ "$(kubectl -n "${MLFLOW_NAMESPACE}" get hpa mlflow \
    -o 'jsonpath={.spec.minReplicas}-{.spec.maxReplicas}')" == 2-5 ]]
}
check "MLflow autoscales between 2 and 5 pods" hpa_bounds
check "MLflow has a PodDisruptionBudget" kubectl -n "${MLFLOW_NAMESPACE}" get pdb mlflow
check "RayCluster rayvision is ready" \
  kubectl -n "${RAY_NAMESPACE}" wait raycluster/rayvision --for=jsonpath='{.status.state}'=ready --timeout=30s
check "RayService classifier is running" \
  kubectl -n "${RAY_NAMESPACE}" wait rayservice/classifier --for=condition=Ready --timeout=30s
checks_passed

log "connections"
if ((DRY_RUN)); then
  exec "${SETUP_DIR}/05-connection-test.sh" --dry-run
fi
exec "${SETUP_DIR}/05-connection-test.sh"
