#!/usr/bin/env bash
# 01: the AWS resources, with Terraform (cluster/terraform/aws-eks): VPC, EKS and its node groups,
# RDS PostgreSQL, the S3 bucket, ECR repositories, IAM roles for service accounts, the TLS
# certificate. Idempotent: the state bucket is created once, and terraform apply converges.
# Needs: AWS_REGION, and cluster/terraform/aws-eks/terraform.tfvars (from terraform.tfvars.example).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${BASH_SOURCE[0]%/*}/lib.sh"
parse_args "Creates or updates the platform's AWS resources with Terraform." "$@"
require_tools aws terraform
require_region
require_aws_credentials

[[ -f "${TF_DIR}/terraform.tfvars" ]] || ((DRY_RUN)) ||
  die "create ${TF_DIR}/terraform.tfvars from terraform.tfvars.example first"

account="$(capture account aws sts get-caller-identity --query Account --output text)"
state_bucket="${TF_STATE_BUCKET:-rayvision-tfstate-${account}}"

# The Terraform state lives in a versioned, encrypted, private bucket of its own.
if ((DRY_RUN)) || ! aws s3api head-bucket --bucket "${state_bucket}" >/dev/null 2>&1; then
  log "creating the Terraform state bucket ${state_bucket}"
  if [[ "${AWS_REGION}" == us-east-1 ]]; then
    run aws s3api create-bucket --bucket "${state_bucket}"
  else
    run aws s3api create-bucket --bucket "${state_bucket}" \
      --create-bucket-configuration "LocationConstraint=${AWS_REGION}"
  fi
  run aws s3api put-bucket-versioning --bucket "${state_bucket}" \
    --versioning-configuration Status=Enabled
  run aws s3api put-bucket-encryption --bucket "${state_bucket}" \
    --server-side-encryption-configuration \
    '{"Rules":[{"ApplyServerSideEncryptionByDefault":{"SSEAlgorithm":"aws:kms"},"BucketKeyEnabled":true}]}'
  run aws s3api put-public-access-block --bucket "${state_bucket}" \
    --public-access-block-configuration \
    BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
fi

# The key policy (kms.tf) names Auto Scaling's service-linked role, which AWS creates only when
# an account first uses Auto Scaling: on a new account the key, and so the apply, would fail.
if ((DRY_RUN)) || ! aws iam get-role --role-name AWSServiceRoleForAutoScaling >/dev/null 2>&1; then
  log "creating Auto Scaling's service-linked role (the KMS key policy names it)"
  run aws iam create-service-linked-role --aws-service-name autoscaling.amazonaws.com
fi

log "applying cluster/terraform/aws-eks (about 20 minutes the first time)"
run terraform -chdir="${TF_DIR}" init -input=false -reconfigure \
  -backend-config="bucket=${state_bucket}" \
  -backend-config="key=rayvision/terraform.tfstate" \
  -backend-config="region=${AWS_REGION}"
run terraform -chdir="${TF_DIR}" apply -input=false -auto-approve -var="region=${AWS_REGION}"
run terraform -chdir="${TF_DIR}" output
log "done: next, 02-cluster.sh"
