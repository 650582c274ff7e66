# The EKS control plane and its three managed node groups:
#   system   on-demand, always 2+: add-ons, the Ray heads, MLflow
#   cpu-spot spot, 0..N: Ray CPU workers (evaluation, Serve replicas)
#   gpu-spot spot, 0..5: Ray GPU workers; the labels and taints below are the ones the RayCluster's
#            GPU worker group selects and tolerates (cluster/kuberay/raycluster/raycluster.yaml).
locals {
  node_groups = {
    system = {
      capacity_type  = "ON_DEMAND"
      ami_type       = "AL2023_x86_64_STANDARD"
      instance_types = [var.system_instance_type]
      min_size       = var.system_node_count.min
      max_size       = var.system_node_count.max
      disk_gb        = 50
      labels         = { "rayvision.io/pool" = "system" }
      taints         = []
    }
    cpu-spot = {
      capacity_type  = "SPOT"
      ami_type       = "AL2023_x86_64_STANDARD"
      instance_types = var.cpu_spot_instance_types
      min_size       = 0
      max_size       = var.cpu_spot_max_nodes
      disk_gb        = 100
      labels         = { "rayvision.io/pool" = "cpu-spot" }
      taints         = [{ key = "rayvision.io/spot", value = "true", effect = "NO_SCHEDULE" }]
    }
    gpu-spot = {
      capacity_type  = "SPOT"
      ami_type       = "AL2023_x86_64_NVIDIA"
      instance_types = var.gpu_instance_types
      min_size       = 0
      max_size       = var.gpu_max_nodes
      disk_gb        = 150
      # nvidia.com/gpu.present: the NVIDIA device plugin's DaemonSet runs only on nodes labelled so
      # (cluster/addons/nvidia-device-plugin-affinity.yaml); EKS node groups set no GPU label.
      labels = { "rayvision.io/pool" = "gpu-spot", "nvidia.com/gpu.present" = "true" }
      taints = [
        { key = "rayvision.io/spot", value = "true", effect = "NO_SCHEDULE" },
        { key = "nvidia.com/gpu", value = "true", effect = "NO_SCHEDULE" },
      ]
    }
  }
}

data "aws_iam_policy_document" "eks_assume" {
  statement {
    actions = ["sts:AssumeRole", "sts:TagSession"]
    principals {
      type        = "Service"
      identifiers = ["eks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "cluster" {
  name               = "${var.name}-eks-cluster"
  assume_role_policy = data.aws_iam_policy_document.eks_assume.json
}

resource "aws_iam_role_policy_attachment" "cluster" {
  role       = aws_iam_role.cluster.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonEKSClusterPolicy"
}

resource "aws_cloudwatch_log_group" "eks" {
  # EKS writes control-plane logs to this exact name.
  name              = "/aws/eks/${var.name}/cluster"
  retention_in_days = 365
  kms_key_id        = aws_kms_key.main.arn
}

resource "aws_eks_cluster" "main" {
  # checkov:skip=CKV_AWS_39: admins run kubectl and helm from their machines; the endpoint is limited to admin_cidrs
  # checkov:skip=CKV_AWS_38: public_access_cidrs is admin_cidrs, whose validation rejects 0.0.0.0/0
  name     = var.name
  version  = var.kubernetes_version
  role_arn = aws_iam_role.cluster.arn

  enabled_cluster_log_types = ["api", "audit", "authenticator", "controllerManager", "scheduler"]

  access_config {
    authentication_mode                         = "API"
    bootstrap_cluster_creator_admin_permissions = true
  }

  vpc_config {
    subnet_ids              = aws_subnet.private[*].id
    endpoint_private_access = true
    # Reachable from admin_cidrs only, for kubectl and helm from the admins' machines.
    endpoint_public_access = true
    public_access_cidrs    = var.admin_cidrs
  }

  encryption_config {
    resources = ["secrets"]
    provider {
      key_arn = aws_kms_key.main.arn
    }
  }

  depends_on = [aws_iam_role_policy_attachment.cluster, aws_cloudwatch_log_group.eks]
}

resource "aws_eks_addon" "core" {
  for_each     = toset(["vpc-cni", "coredns", "kube-proxy"])
  cluster_name = aws_eks_cluster.main.name
  addon_name   = each.value
  # The VPC CNI enforces NetworkPolicies (cluster/kuberay/networkpolicies.yaml, the MLflow
  # chart's) only with its network-policy agent on; without it they are accepted and ignored.
  configuration_values = each.value == "vpc-cni" ? jsonencode({ enableNetworkPolicy = "true" }) : null

  depends_on = [aws_eks_node_group.main["system"]]
}

# IAM roles for service accounts: the cluster's OIDC issuer is trusted by IAM (iam.tf).
data "tls_certificate" "oidc" {
  url = aws_eks_cluster.main.identity[0].oidc[0].issuer
}

resource "aws_iam_openid_connect_provider" "eks" {
  url             = aws_eks_cluster.main.identity[0].oidc[0].issuer
  client_id_list  = ["sts.amazonaws.com"]
  thumbprint_list = [data.tls_certificate.oidc.certificates[0].sha1_fingerprint]
}

data "aws_iam_policy_document" "node_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  name               = "${var.name}-eks-node"
  assume_role_policy = data.aws_iam_policy_document.node_assume.json
}

resource "aws_iam_role_policy_attachment" "node" {
  for_each = toset([
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    "AmazonEC2ContainerRegistryReadOnly",
  ])
  role       = aws_iam_role.node.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/${each.value}"
}

resource "aws_launch_template" "node" {
  for_each = local.node_groups
  name     = "${var.name}-${each.key}"

  # IMDSv2 only, one hop: pods cannot reach the node's credentials; they use IRSA instead.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = each.value.disk_gb
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = aws_kms_key.main.arn
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = { Name = "${var.name}-${each.key}" }
  }
}

resource "aws_eks_node_group" "main" {
  for_each        = local.node_groups
  cluster_name    = aws_eks_cluster.main.name
  node_group_name = each.key
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = aws_subnet.private[*].id
  capacity_type   = each.value.capacity_type
  ami_type        = each.value.ami_type
  instance_types  = each.value.instance_types
  labels          = each.value.labels

  launch_template {
    id      = aws_launch_template.node[each.key].id
    version = aws_launch_template.node[each.key].latest_version
  }

  scaling_config {
    min_size     = each.value.min_size
    max_size     = each.value.max_size
    desired_size = each.value.min_size
  }

  dynamic "taint" {
    for_each = each.value.taints
    content {
      key    = taint.value.key
      value  = taint.value.value
      effect = taint.value.effect
    }
  }

  update_config {
    max_unavailable = 1
  }

  # The cluster autoscaler owns the node count once the group exists.
  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.node]
}

# A group at 0 nodes has no node to show its labels, taints and GPUs: these tags on its Auto
# Scaling group tell the cluster autoscaler, so that a pending Ray GPU pod scales it up from 0.
locals {
  autoscaler_template_tags = merge([
    for group, spec in local.node_groups : merge(
      {
        for k, v in merge(spec.labels, { "eks.amazonaws.com/capacityType" = spec.capacity_type }) :
        "${group}|k8s.io/cluster-autoscaler/node-template/label/${k}" => v
      },
      {
        for t in spec.taints :
        "${group}|k8s.io/cluster-autoscaler/node-template/taint/${t.key}" => "${t.value}:NoSchedule"
      },
      group == "gpu-spot" ? { "${group}|k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu" = "1" } : {},
    ) if spec.min_size == 0
  ]...)
}

resource "aws_autoscaling_group_tag" "node_template" {
  for_each               = local.autoscaler_template_tags
  autoscaling_group_name = aws_eks_node_group.main[split("|", each.key)[0]].resources[0].autoscaling_groups[0].name

  tag {
    key                 = split("|", each.key)[1]
    value               = each.value
    propagate_at_launch = false
  }
}
