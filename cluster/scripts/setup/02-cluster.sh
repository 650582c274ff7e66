#!/usr/bin/env bash
# 02: the Kubernetes side of the cluster created by 01: kubeconfig, the add-ons (AWS Load Balancer
# Controller, cluster autoscaler, NVIDIA device plugin, metrics-server, KubeRay operator; each at
# the chart version lib.sh pins), the Ray image in ECR,
# the rayvision namespace with its config and secrets, and the Ray workloads: the long-lived
# RayCluster, the RayService with its HTTPS ingress, and the scheduled RayCronJobs.
# Idempotent: helm upgrade --install, kubectl apply, secrets kept across reruns, images built once
# per commit.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${BASH_SOURCE[0]%/*}/lib.sh"
parse_args "Installs the cluster add-ons, the Ray image and the Ray workloads." "$@"
require_tools aws terraform kubectl helm docker git jq envsubst openssl base64
require_region
require_aws_credentials

cluster="$(tf_output cluster_name)"
vpc_id="$(tf_output vpc_id)"
ray_storage="$(tf_output ray_storage_uri)"
redis_endpoint="$(tf_output ray_gcs_redis_endpoint)"

run aws eks update-kubeconfig --name "${cluster}" --region "${AWS_REGION}"

log "add-ons"
run helm repo add eks https://aws.github.io/eks-charts --force-update
run helm repo add autoscaler https://kubernetes.github.io/autoscaler --force-update
run helm repo add nvdp https://nvidia.github.io/k8s-device-plugin --force-update
run helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update
run helm repo add metrics-server https://kubernetes-sigs.github.io/metrics-server/ --force-update
run helm repo update
lb_role="$(tf_map_output irsa_role_arns aws-load-balancer-controller)"
autoscaler_role="$(tf_map_output irsa_role_arns cluster-autoscaler)"
run helm upgrade --install aws-load-balancer-controller eks/aws-load-balancer-controller \
  --namespace kube-system --wait --version "${AWS_LB_CONTROLLER_CHART_VERSION}" \
  --set clusterName="${cluster}" --set region="${AWS_REGION}" --set vpcId="${vpc_id}" \
  --set serviceAccount.name=aws-load-balancer-controller \
  --set "serviceAccount.annotations.eks\.amazonaws\.com/role-arn=${lb_role}" \
  --set "nodeSelector.rayvision\.io/pool=system"
# Removes an empty spot node a few minutes after its Ray pod left (default: 10 minutes).
run helm upgrade --install cluster-autoscaler autoscaler/cluster-autoscaler \
  --namespace kube-system --wait --version "${CLUSTER_AUTOSCALER_CHART_VERSION}" \
  --set autoDiscovery.clusterName="${cluster}" --set awsRegion="${AWS_REGION}" \
  --set rbac.serviceAccount.name=cluster-autoscaler \
  --set "rbac.serviceAccount.annotations.eks\.amazonaws\.com/role-arn=${autoscaler_role}" \
  --set extraArgs.balance-similar-node-groups=true \
  --set extraArgs.scale-down-unneeded-time=3m \
  --set "nodeSelector.rayvision\.io/pool=system"
# Its DaemonSet also needs one of the labels of its chart's default affinity
# (cluster/addons/nvidia-device-plugin-affinity.yaml): the GPU node group sets nvidia.com/gpu.present.
run helm upgrade --install nvidia-device-plugin nvdp/nvidia-device-plugin \
  --namespace kube-system --wait --version "${NVIDIA_DEVICE_PLUGIN_CHART_VERSION}" \
  --set-json 'tolerations=[{"operator":"Exists"}]' \
  --set "nodeSelector.rayvision\.io/pool=gpu-spot"
# Resource metrics for the MLflow chart's HorizontalPodAutoscaler (EKS ships none).
run helm upgrade --install metrics-server metrics-server/metrics-server \
  --namespace kube-system --wait --version "${METRICS_SERVER_CHART_VERSION}" \
  --set "nodeSelector.rayvision\.io/pool=system"
run helm upgrade --install kuberay-operator kuberay/kuberay-operator \
  --namespace kuberay-system --create-namespace --wait --version "${KUBERAY_VERSION}" \
  --values "${KUBERAY_DIR}/operator-values.yaml"

log "the Ray image"
commit="$(capture commit git -C "${REPO_ROOT}" rev-parse --short HEAD)"
# Runs in the image record the full commit and whether tracked files differed from it
# (app/code_version.py): the image has no .git to read them from.
full_commit="$(capture full-commit git -C "${REPO_ROOT}" rev-parse HEAD)"
changes="$(capture changes git -C "${REPO_ROOT}" status --porcelain --untracked-files=no)"
dirty=false
[[ -z "${changes}" ]] || dirty=true
ray_repo="$(tf_output ray_image_repository)"
ray_image="${ray_repo}:2.60.0-${commit}"
build_and_push "${ray_image}" cluster/docker/Dockerfile \
  --build-arg "GIT_COMMIT=${full_commit}" --build-arg "GIT_DIRTY=${dirty}"
# Pods run the pushed image by digest: exactly what was built, whatever the tag names later.
RAYVISION_IMAGE="${ray_repo}@$(image_digest "${ray_image}")"
export RAYVISION_IMAGE

log "namespace ${RAY_NAMESPACE}: config and secrets"
apply_generated kubectl create namespace "${RAY_NAMESPACE}"
# Read by every Ray container and job submitter (envFrom).
apply_generated kubectl -n "${RAY_NAMESPACE}" create configmap rayvision-config \
  --from-literal=MLFLOW_TRACKING_URI="http://mlflow.${MLFLOW_NAMESPACE}.svc.cluster.local:5000" \
  --from-literal=RAYVISION_STORAGE_PATH="${ray_storage}" \
  --from-literal=RAYVISION_DATA_DIR=/home/ray/data
# The cluster's Ray token.
apply_secret "${RAY_NAMESPACE}" rayvision-ray-token \
  "auth_token=$(random_or_existing "${RAY_NAMESPACE}" rayvision-ray-token auth_token)"
# The serving cluster's own token: a Serve pod's token opens nothing on the training cluster.
apply_secret "${RAY_NAMESPACE}" rayvision-serve-ray-token \
  "auth_token=$(random_or_existing "${RAY_NAMESPACE}" rayvision-serve-ray-token auth_token)"
# The MLflow users of the Ray pods, one Secret each (04-users.sh creates the users in MLflow):
# the jobs (register, set @challenger), the promotion step (moves @champion; mounted only where
# evaluate-promote.sh runs) and Serve (read only).
mlflow_client_secret() { # SECRET USERNAME
  apply_secret "${RAY_NAMESPACE}" "$1" "MLFLOW_TRACKING_USERNAME=$2" \
    "MLFLOW_TRACKING_PASSWORD=$(random_or_existing "${RAY_NAMESPACE}" "$1" MLFLOW_TRACKING_PASSWORD)"
}
mlflow_client_secret rayvision-mlflow-client ray-jobs
mlflow_client_secret rayvision-mlflow-promoter ray-promote
mlflow_client_secret rayvision-mlflow-serve ray-serve
# The key that sweeps sign their Tune state with: a --resume restores only what a sweep wrote.
apply_secret "${RAY_NAMESPACE}" rayvision-tune-state-key "RAYVISION_TUNE_STATE_KEY=$(
  random_or_existing "${RAY_NAMESPACE}" rayvision-tune-state-key RAYVISION_TUNE_STATE_KEY)"

log "Ray workloads"
RAYVISION_RAY_ROLE_ARN="$(tf_map_output irsa_role_arns ray)"
RAYVISION_SERVE_HOST="$(tf_output serve_host)"
RAYVISION_CERT_ARN="$(tf_output certificate_arn)"
RAYVISION_WAF_ACL_ARN="$(tf_output waf_acl_arn)"
export RAYVISION_RAY_ROLE_ARN RAYVISION_SERVE_HOST RAYVISION_CERT_ARN RAYVISION_WAF_ACL_ARN
raycluster="${KUBERAY_DIR}/raycluster"
if [[ -n "${redis_endpoint}" ]] && ! ((DRY_RUN)); then
  # terraform enable_ray_gcs_ft: the head keeps its state in ElastiCache (GCS fault tolerance).
  redis_password="$(aws secretsmanager get-secret-value --query SecretString --output text \
    --secret-id "$(tf_output ray_gcs_redis_secret_arn)")"
  apply_secret "${RAY_NAMESPACE}" rayvision-gcs-redis "password=${redis_password}"
  export RAYVISION_REDIS_ADDRESS="rediss://${redis_endpoint}:6379"
  raycluster="${KUBERAY_DIR}/raycluster-gcs-ft"
fi
# The NetworkPolicies first: no Ray pod starts before its allows (and denies) exist.
apply_manifests "${KUBERAY_DIR}/networkpolicies.yaml" "${KUBERAY_DIR}/serviceaccount.yaml" \
  "${raycluster}" "${KUBERAY_DIR}/rayservice.yaml" "${KUBERAY_DIR}/serve-ingress.yaml" \
  "${KUBERAY_DIR}"/raycronjob-*.yaml
raycluster_ready() {
  [[ "$(kubectl -n "${RAY_NAMESPACE}" get raycluster rayvision -o 'jsonpath={.status.state}')" == ready ]]
}
wait_until 900 "the RayCluster to be ready" raycluster_ready
log "done: next, 03-mlflow.sh"
