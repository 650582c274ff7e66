# Per-client rate rules in front of both load balancers (the ingresses name this ACL: the MLflow
# chart's ingress.wafAclArn and serve-ingress.yaml). Every MLflow request checks a password with
# scrypt (~0.14 s of CPU and 32 MiB on the server), so a few clients guessing passwords could
# saturate its pods; the tighter rule on the MLflow host cuts them off at the ALB. In-cluster
# clients (the Ray jobs) reach MLflow through its Service and are not counted.
resource "aws_wafv2_web_acl" "ingress" {
  # checkov:skip=CKV2_AWS_31: request logging to Firehose/S3 is an add-on with its own cost; the rules' CloudWatch metrics and sampled requests are on
  # checkov:skip=CKV_AWS_192: the Log4j rule group protects Java applications; both backends are Python
  name        = "${var.name}-ingress"
  description = "Per-client rate limits of the MLflow and inference hosts"
  scope       = "REGIONAL"

  default_action {
    allow {}
  }

  rule {
    name     = "mlflow-per-client"
    priority = 0

    action {
      block {}
    }

    statement {
      rate_based_statement {
        limit                 = var.mlflow_rate_limit
        evaluation_window_sec = 300
        aggregate_key_type    = "IP"

        scope_down_statement {
          byte_match_statement {
            search_string         = var.mlflow_host
            positional_constraint = "EXACTLY"

            field_to_match {
              single_header {
                name = "host"
              }
            }

            text_transformation {
              priority = 0
              type     = "LOWERCASE"
            }
          }
        }
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-mlflow-per-client"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "all-per-client"
    priority = 1

    action {
      block {}
    }

    statement {
      rate_based_statement {
        limit                 = var.ingress_rate_limit
        evaluation_window_sec = 300
        aggregate_key_type    = "IP"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-all-per-client"
      sampled_requests_enabled   = true
    }
  }

  visibility_config {
    cloudwatch_metrics_enabled = true
    metric_name                = "${var.name}-ingress"
    sampled_requests_enabled   = true
  }
}
