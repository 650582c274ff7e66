# Optional (enable_ray_gcs_ft): Redis for Ray GCS fault tolerance, used by the overlay
# cluster/kuberay/raycluster-gcs-ft. Encrypted in transit and at rest, with an auth token kept in
# Secrets Manager for 02-cluster.sh.
resource "aws_security_group" "redis" {
  count       = var.enable_ray_gcs_ft ? 1 : 0
  name        = "${var.name}-redis"
  description = "Redis for the Ray GCS, reachable from the EKS nodes only"
  vpc_id      = aws_vpc.main.id
}

resource "aws_vpc_security_group_ingress_rule" "redis_from_nodes" {
  count                        = var.enable_ray_gcs_ft ? 1 : 0
  security_group_id            = aws_security_group.redis[0].id
  description                  = "Redis from the Ray head pods"
  referenced_security_group_id = aws_eks_cluster.main.vpc_config[0].cluster_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
}

resource "aws_elasticache_subnet_group" "redis" {
  count      = var.enable_ray_gcs_ft ? 1 : 0
  name       = "${var.name}-redis"
  subnet_ids = aws_subnet.private[*].id
}

resource "random_password" "redis" {
  count   = var.enable_ray_gcs_ft ? 1 : 0
  length  = 48
  special = false
}

resource "aws_secretsmanager_secret" "redis" {
  # checkov:skip=CKV2_AWS_57: ElastiCache auth tokens are rotated with modify-replication-group, not by a Secrets Manager rotation lambda
  count      = var.enable_ray_gcs_ft ? 1 : 0
  name       = "${var.name}/ray-gcs-redis"
  kms_key_id = aws_kms_key.main.arn
}

resource "aws_secretsmanager_secret_version" "redis" {
  count         = var.enable_ray_gcs_ft ? 1 : 0
  secret_id     = aws_secretsmanager_secret.redis[0].id
  secret_string = random_password.redis[0].result
}

resource "aws_elasticache_replication_group" "redis" {
  count                      = var.enable_ray_gcs_ft ? 1 : 0
  replication_group_id       = "${var.name}-gcs"
  description                = "Ray GCS fault tolerance"
  engine                     = "redis"
  engine_version             = "7.1"
  node_type                  = "cache.t4g.micro"
  num_cache_clusters         = 2
  automatic_failover_enabled = true
  multi_az_enabled           = true
  subnet_group_name          = aws_elasticache_subnet_group.redis[0].name
  security_group_ids         = [aws_security_group.redis[0].id]
  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.main.arn
  transit_encryption_enabled = true
  auth_token                 = random_password.redis[0].result
  snapshot_retention_limit   = 1
  auto_minor_version_upgrade = true
}
