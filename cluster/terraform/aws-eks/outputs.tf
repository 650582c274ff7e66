# Read by the setup scripts (terraform output -raw NAME).
output "cluster_name" {
  value = aws_eks_cluster.main.name
}

output "region" {
  value = var.region
}

output "vpc_id" {
  value = aws_vpc.main.id
}

output "artifact_bucket" {
  value = aws_s3_bucket.artifacts.bucket
}

output "mlflow_artifacts_uri" {
  value = "s3://${aws_s3_bucket.artifacts.bucket}/mlflow"
}

output "ray_storage_uri" {
  value = "s3://${aws_s3_bucket.artifacts.bucket}/ray"
}

output "rds_endpoint" {
  description = "Host name of the PostgreSQL instance."
  value       = aws_db_instance.mlflow.address
}

output "rds_master_secret_arn" {
  description = "Secrets Manager secret with the database's username and password (managed by RDS)."
  value       = aws_db_instance.mlflow.master_user_secret[0].secret_arn
}

output "certificate_arn" {
  value = aws_acm_certificate_validation.main.certificate_arn
}

output "hosted_zone_id" {
  value = data.aws_route53_zone.main.zone_id
}

output "mlflow_host" {
  value = var.mlflow_host
}

output "serve_host" {
  value = var.serve_host
}

output "ray_image_repository" {
  description = "ECR repository of the Ray cluster image (cluster/docker/Dockerfile)."
  value       = aws_ecr_repository.images[var.name].repository_url
}

output "mlflow_image_repository" {
  description = "ECR repository of the MLflow server image (cluster/docker/mlflow.Dockerfile)."
  value       = aws_ecr_repository.images["${var.name}-mlflow"].repository_url
}

output "irsa_role_arns" {
  description = "IAM role of each service account (mlflow, ray, aws-load-balancer-controller, cluster-autoscaler)."
  value       = { for name, role in aws_iam_role.irsa : name => role.arn }
}

output "ray_gcs_redis_endpoint" {
  description = "Primary endpoint of the GCS fault-tolerance Redis; empty unless enable_ray_gcs_ft."
  value       = var.enable_ray_gcs_ft ? aws_elasticache_replication_group.redis[0].primary_endpoint_address : ""
}

output "ray_gcs_redis_secret_arn" {
  value = var.enable_ray_gcs_ft ? aws_secretsmanager_secret.redis[0].arn : ""
}

output "waf_acl_arn" {
  value = aws_wafv2_web_acl.ingress.arn
}
