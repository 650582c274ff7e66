# IAM roles for service accounts (IRSA): each Kubernetes service account below may assume one
# role, and each role may do only what its pods need.
locals {
  oidc_issuer = replace(aws_eks_cluster.main.identity[0].oidc[0].issuer, "https://", "")

  irsa = {
    mlflow = {
      namespace       = "mlflow"
      service_account = "mlflow"
      policy          = data.aws_iam_policy_document.mlflow.json
    }
    ray = {
      namespace       = "rayvision"
      service_account = "rayvision-ray"
      policy          = data.aws_iam_policy_document.bucket_prefix["ray"].json
    }
    aws-load-balancer-controller = {
      namespace       = "kube-system"
      service_account = "aws-load-balancer-controller"
      # The controller's own policy for its pinned version (cluster/addons/README.md says why).
      policy = jsonencode(jsondecode(file("${path.module}/../../addons/aws-load-balancer-controller-iam-policy.json")))
    }
    cluster-autoscaler = {
      namespace       = "kube-system"
      service_account = "cluster-autoscaler"
      policy          = data.aws_iam_policy_document.cluster_autoscaler.json
    }
  }
}

data "aws_iam_policy_document" "irsa_assume" {
  for_each = local.irsa

  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.eks.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${each.value.namespace}:${each.value.service_account}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "irsa" {
  for_each           = local.irsa
  name               = "${var.name}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.irsa_assume[each.key].json
}

resource "aws_iam_role_policy" "irsa" {
  for_each = local.irsa
  name     = each.key
  role     = aws_iam_role.irsa[each.key].id
  policy   = each.value.policy
}

# MLflow reads and writes under mlflow/, the Ray pods under ray/; neither sees the other's data.
data "aws_iam_policy_document" "bucket_prefix" {
  for_each = toset(["mlflow", "ray"])

  statement {
    sid       = "ListOwnPrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.artifacts.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${each.value}/*", "${each.value}/"]
    }
  }

  # HeadBucket, which pyarrow (Ray Train's and Tune's storage) calls before creating a
  # directory, is authorised as ListBucket with no s3:prefix; so is the 404 (instead of 403) for a
  # missing key, which pyarrow needs to tell "not there" from "forbidden". The price: a listing
  # without a prefix is allowed too, so each role can see the other's key names, not their data.
  statement {
    sid       = "HeadBucketAndMissingKeys"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.artifacts.arn]
    condition {
      test     = "Null"
      variable = "s3:prefix"
      values   = ["true"]
    }
  }

  statement {
    sid = "ReadWriteOwnPrefix"
    actions = [
      "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${aws_s3_bucket.artifacts.arn}/${each.value}/*"]
  }

  statement {
    sid       = "UseBucketKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.main.arn]
  }
}

# The MLflow pods also read the database password RDS keeps (and rotates) in Secrets Manager: the
# chart's sidecar turns it into libpq's password file. The secret is encrypted with the main key,
# which bucket_prefix already lets them decrypt.
data "aws_iam_policy_document" "mlflow" {
  source_policy_documents = [data.aws_iam_policy_document.bucket_prefix["mlflow"].json]

  statement {
    sid       = "ReadDatabasePassword"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_db_instance.mlflow.master_user_secret[0].secret_arn]
  }
}

# The cluster autoscaler adds and removes nodes of this cluster's node groups only.
data "aws_iam_policy_document" "cluster_autoscaler" {
  statement {
    sid = "Describe"
    actions = [
      "autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeAutoScalingInstances",
      "autoscaling:DescribeLaunchConfigurations", "autoscaling:DescribeScalingActivities",
      "autoscaling:DescribeTags", "ec2:DescribeImages", "ec2:DescribeInstanceTypes",
      "ec2:DescribeLaunchTemplateVersions", "ec2:GetInstanceTypesFromInstanceRequirements",
    ]
    resources = ["*"]
  }

  statement {
    sid       = "DescribeOwnNodeGroups"
    actions   = ["eks:DescribeNodegroup"]
    resources = ["arn:${local.partition}:eks:${var.region}:${local.account_id}:nodegroup/${var.name}/*"]
  }

  statement {
    sid       = "ScaleOwnNodeGroups"
    actions   = ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/k8s.io/cluster-autoscaler/${var.name}"
      values   = ["owned"]
    }
  }
}
