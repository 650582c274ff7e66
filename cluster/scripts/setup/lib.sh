# shellcheck shell=bash disable=SC2034  # (variables here are used by the scripts that source it)
# Helpers shared by the setup scripts 01..06: flags, dry-run, tool and credential checks, terraform
# outputs, manifest rendering. Sourced, never run. Uses only bash builtins until a tool is checked,
# so a missing tool is reported as such.

set -euo pipefail

SETUP_DIR="$(cd "${BASH_SOURCE[0]%/*}" && pwd)"
REPO_ROOT="$(cd "${SETUP_DIR}/../../.." && pwd)"
TF_DIR="${REPO_ROOT}/cluster/terraform/aws-eks"
KUBERAY_DIR="${REPO_ROOT}/cluster/kuberay"

# The project's Python (its venv: `make venv`) for the tools the scripts share with the Makefile.
PYTHON="${PYTHON:-${REPO_ROOT}/.venv/bin/python}"

RAY_NAMESPACE="${RAY_NAMESPACE:-rayvision}"
MLFLOW_NAMESPACE="${MLFLOW_NAMESPACE:-mlflow}"
# The operator and add-on charts 02-cluster.sh installs, pinned; each chart's app in the comment
# (cluster/addons/README.md: what is vendored from them). The KubeRay CRDs in
# cluster/kuberay/crds/ are this version's.
KUBERAY_VERSION="${KUBERAY_VERSION:-1.6.2}"
AWS_LB_CONTROLLER_CHART_VERSION=3.5.0    # aws-load-balancer-controller v3.5.0 (eks-charts)
CLUSTER_AUTOSCALER_CHART_VERSION=9.59.0  # cluster-autoscaler 1.35.0: its minor is the cluster's
NVIDIA_DEVICE_PLUGIN_CHART_VERSION=0.20.0 # k8s-device-plugin v0.20.0
METRICS_SERVER_CHART_VERSION=3.13.1      # metrics-server 0.8.1 (the MLflow HPA reads its metrics)

# The only ${VAR}s that render_manifest fills in; any other $ in a manifest is left alone (the
# job entrypoints expand $RAYVISION_* in the submitter pod).
MANIFEST_VARS=(
  RAYVISION_IMAGE RAYVISION_RAY_ROLE_ARN RAYVISION_SERVE_HOST RAYVISION_CERT_ARN
  RAYVISION_REDIS_ADDRESS RAYVISION_WAF_ACL_ARN
)

DRY_RUN=0

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
  printf 'ERROR: %s\n' "$*" >&2
  exit 1
}

# parse_args DESCRIPTION "$@": the flags every script takes.
parse_args() {
  local description="$1"
  shift
  while (($#)); do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      -h | --help)
        printf 'Usage: %s [--dry-run]\n\n%s\n\n' "${0##*/}" "${description}"
        printf '  --dry-run  print the commands that would run, change nothing\n'
        exit 0
        ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
}

# Prints a command as it would be typed (secrets are masked by the callers); a lone | is a pipe.
show() {
  local arg line="+" safe='^[][A-Za-z0-9_./:=,@%+{}<>|-]+$' quote="'\\''"
  for arg in "$@"; do
    if [[ "${arg}" =~ ${safe} ]]; then
      line+=" ${arg}"
    else
      line+=" '${arg//\'/${quote}}'"
    fi
  done
  printf '%s\n' "${line}" >&2
}

# Runs a command, or only prints it under --dry-run.
run() {
  show "$@"
  ((DRY_RUN)) || "$@"
}

# VAR="$(capture LABEL CMD...)": the output of CMD, or <LABEL> under --dry-run (which prints CMD).
capture() {
  local label="$1"
  shift
  if ((DRY_RUN)); then
    show "$@"
    printf '<%s>' "${label}"
  else
    "$@"
  fi
}

declare -A INSTALL_HINT=(
  [aws]="AWS CLI v2, https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html"
  [terraform]=">= 1.10, https://developer.hashicorp.com/terraform/install"
  [kubectl]="https://kubernetes.io/docs/tasks/tools/"
  [helm]=">= 3.14, https://helm.sh/docs/intro/install/"
  [docker]="to build and push the images, https://docs.docker.com/engine/install/"
  [jq]="apt-get install jq / brew install jq"
  [envsubst]="apt-get install gettext-base / brew install gettext"
  [openssl]="apt-get install openssl / brew install openssl"
  [curl]="apt-get install curl / brew install curl"
  [git]="apt-get install git / brew install git"
  [ray]="the project's environment: pip install -e . in the repository"
  [base64]="part of coreutils"
  ["${PYTHON}"]="the project's environment: make venv in the repository (or set PYTHON)"
)

# Fails with every missing tool and how to install it; under --dry-run only warns.
require_tools() {
  local tool missing=()
  for tool in "$@"; do
    command -v "${tool}" >/dev/null 2>&1 || missing+=("${tool}")
  done
  ((${#missing[@]})) || return 0
  local message="missing required tools: ${missing[*]}"
  for tool in "${missing[@]}"; do
    message+=$'\n'"  ${tool}: ${INSTALL_HINT[${tool}]:-install it and put it on PATH}"
  done
  if ((DRY_RUN)); then
    warn "${message}"
  else
    die "${message}"
  fi
}

require_aws_credentials() {
  if ((DRY_RUN)); then
    show aws sts get-caller-identity
    return 0
  fi
  aws sts get-caller-identity --query Account --output text >/dev/null 2>&1 ||
    die "no usable AWS credentials: run 'aws configure' or 'aws sso login', or set AWS_PROFILE"
}

# AWS_REGION, which every script needs; a placeholder under --dry-run when unset.
require_region() {
  if [[ -z "${AWS_REGION:-}" ]]; then
    ((DRY_RUN)) || die "set AWS_REGION to the region of the platform, e.g. export AWS_REGION=eu-west-1"
    AWS_REGION="<AWS_REGION>"
  fi
  export AWS_REGION
}

# wait_until SECONDS DESCRIPTION CMD...: polls CMD every 5 s until it succeeds or time runs out.
wait_until() {
  local timeout="$1" description="$2"
  local deadline=$((SECONDS + timeout))
  shift 2
  if ((DRY_RUN)); then
    show wait "${timeout}s" for "${description}:" "$@"
    return 0
  fi
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out waiting for ${description}"
    sleep 5
  done
}

# VAR="$(tf_output NAME)": an output of the stack applied by 01-aws-resources.sh.
tf_output() {
  capture "$1" terraform -chdir="${TF_DIR}" output -raw "$1"
}

# VAR="$(tf_map_output NAME KEY)": one entry of a map output of that stack.
tf_map_output() {
  if ((DRY_RUN)); then
    show terraform -chdir="${TF_DIR}" output -json "$1" '|' jq -r ".[\"$2\"]"
    printf '<%s[%s]>' "$1" "$2"
  else
    terraform -chdir="${TF_DIR}" output -json "$1" | jq -r --arg key "$2" '.[$key]'
  fi
}

# Prints a manifest with its ${VAR} placeholders filled in from the environment; fails if one
# that the manifest uses is unset.
render_manifest() {
  local file="$1" name text formats=()
  text="$(<"${file}")"
  for name in "${MANIFEST_VARS[@]}"; do
    [[ "${text}" == *"\${${name}}"* ]] || continue
    [[ -n "${!name:-}" ]] || die "${file}: \$${name} is not set"
    formats+=("\${${name}}")
  done
  envsubst "${formats[*]}" <<<"${text}"
}

# Applies rendered manifests (files, or kustomize directories) with kubectl.
apply_manifests() {
  local path
  for path in "$@"; do
    if [[ -d "${path}" ]]; then
      if ((DRY_RUN)); then
        show kubectl kustomize "${path}" '|' render_manifest /dev/stdin '|' kubectl apply -f -
      else
        kubectl kustomize "${path}" | render_manifest /dev/stdin | kubectl apply -f -
      fi
    elif ((DRY_RUN)); then
      show render_manifest "${path}" '|' kubectl apply -f -
    else
      render_manifest "${path}" | kubectl apply -f -
    fi
  done
}

# apply_generated CMD...: `CMD --dry-run=client -o yaml | kubectl apply -f -`, the idempotent
# form of a `kubectl create ...` command.
apply_generated() {
  if ((DRY_RUN)); then
    show "$@" --dry-run=client -o yaml '|' kubectl apply -f -
  else
    "$@" --dry-run=client -o yaml | kubectl apply -f -
  fi
}

# apply_secret NAMESPACE NAME KEY=VALUE...: creates or updates a Secret. Values travel through a
# file descriptor, never through a process's arguments, and are masked under --dry-run.
apply_secret() {
  local namespace="$1" name="$2" pair
  shift 2
  if ((DRY_RUN)); then
    show kubectl -n "${namespace}" create secret generic "${name}" "${@/=*/=***}" '|' kubectl apply -f -
    return 0
  fi
  kubectl -n "${namespace}" create secret generic "${name}" \
    --from-env-file=<(for pair in "$@"; do printf '%s\n' "${pair}"; done) \
    --dry-run=client -o yaml | kubectl apply -f -
}

# secret_value NAMESPACE NAME KEY: a key of an existing Secret, or nothing.
secret_value() {
  kubectl -n "$1" get secret "$2" -o "jsonpath={.data.$3}" 2>/dev/null | base64 --decode
}

# A new random secret, or the one already stored, so that reruns keep passwords and tokens.
random_or_existing() {
  local existing
  if ((DRY_RUN)); then
    printf '<random>'
    return 0
  fi
  existing="$(secret_value "$1" "$2" "$3" || true)"
  if [[ -n "${existing}" ]]; then
    printf '%s' "${existing}"
  else
    openssl rand -hex 32
  fi
}

# check DESCRIPTION CMD...: runs CMD as a named check and records its outcome (see checks_passed).
CHECK_FAILURES=0
check() {
  local description="$1"
  shift
  if ((DRY_RUN)); then
    show check "${description}:" "$@"
  elif "$@" >/dev/null 2>&1; then
    printf 'PASS  %s\n' "${description}"
  else
    printf 'FAIL  %s\n' "${description}"
    CHECK_FAILURES=$((CHECK_FAILURES + 1))
  fi
}

# Exit status of a checking script: non-zero when any check failed.
checks_passed() {
  ((CHECK_FAILURES == 0)) || die "${CHECK_FAILURES} check(s) failed"
  log "all checks passed"
}

# port_forward NAMESPACE TARGET LOCAL_PORT REMOTE_PORT: a kubectl port-forward in the background,
# stopped when the script exits; returns once the local port answers.
port_forward() {
  if ((DRY_RUN)); then
    show kubectl -n "$1" port-forward "$2" "$3:$4" '&'
    return 0
  fi
  kubectl -n "$1" port-forward "$2" "$3:$4" >/dev/null &
  PORT_FORWARD_PIDS+=("$!")
  trap 'kill "${PORT_FORWARD_PIDS[@]}" 2>/dev/null' EXIT
  local deadline=$((SECONDS + 60))
  until (: </dev/tcp/127.0.0.1/"$3") 2>/dev/null; do
    ((SECONDS < deadline)) || die "port-forward to $1/$2 did not come up"
    sleep 1
  done
}
PORT_FORWARD_PIDS=()

# image_digest REPO:TAG: the digest (sha256:...) ECR holds for that tag, to run the image by it.
image_digest() {
  local image="$1" repo="${1%:*}"
  capture digest aws ecr describe-images --repository-name "${repo#*/}" \
    --image-ids "imageTag=${image##*:}" --query 'imageDetails[0].imageDigest' --output text
}

# build_and_push IMAGE DOCKERFILE [docker build args...]: build and push IMAGE (repo:tag in ECR)
# unless that tag is already there. ECR tags are immutable: an image is never rebuilt.
build_and_push() {
  local image="$1" dockerfile="$2"
  shift 2
  local repo="${image%:*}"
  if ((DRY_RUN)) || ! aws ecr describe-images --repository-name "${repo#*/}" \
    --image-ids "imageTag=${image##*:}" >/dev/null 2>&1; then
    if ((DRY_RUN)); then
      show aws ecr get-login-password '|' docker login --username AWS --password-stdin "${repo%%/*}"
    else
      aws ecr get-login-password | docker login --username AWS --password-stdin "${repo%%/*}"
    fi
    run docker build -f "${REPO_ROOT}/${dockerfile}" "$@" -t "${image}" "${REPO_ROOT}"
    run docker push "${image}"
  fi
}
