variable "region" {
  description = "AWS region of every resource."
  type        = string
  default     = "eu-west-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as eu-west-1."
  }
}

variable "name" {
  description = "Name of the EKS cluster and prefix of every resource."
  type        = string
  default     = "rayvision"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,30}$", var.name))
    error_message = "name must be 3-31 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version. Keep it in standard support: extended support costs 6x."
  type        = string
  default     = "1.35"

  validation {
    condition = (
      can(regex("^1\\.[0-9]+$", var.kubernetes_version))
      && try(tonumber(split(".", var.kubernetes_version)[1]) >= 30, false)
    )
    error_message = "kubernetes_version must be 1.30 or newer, written MAJOR.MINOR."
  }
}

variable "admin_cidrs" {
  description = "CIDRs allowed to reach the EKS API endpoint (kubectl, helm): your office or VPN."
  type        = list(string)

  validation {
    condition     = length(var.admin_cidrs) > 0 && alltrue([for c in var.admin_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "admin_cidrs must list valid CIDRs, and not 0.0.0.0/0."
  }
}

variable "vpc_cidr" {
  description = "CIDR of the VPC; split into two public and two private subnets."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr must be a valid CIDR of size /20 or larger."
  }
}

variable "system_instance_type" {
  description = "On-demand instance type of the two always-on nodes (add-ons, Ray heads, MLflow)."
  type        = string
  default     = "t3a.medium"
}

variable "system_node_count" {
  description = "Minimum and maximum size of the on-demand system node group."
  type        = object({ min = number, max = number })
  default     = { min = 2, max = 4 }

  validation {
    condition     = var.system_node_count.min >= 2 && var.system_node_count.max >= var.system_node_count.min
    error_message = "system_node_count.min must be at least 2 (high availability) and max >= min."
  }
}

variable "cpu_spot_instance_types" {
  description = "Spot instance types of the Ray CPU worker nodes (same vCPU and memory)."
  type        = list(string)
  default     = ["m6a.large", "m5a.large", "m7a.large"]
}

variable "cpu_spot_max_nodes" {
  description = "Upper bound of the Ray CPU worker node group (it scales from 0)."
  type        = number
  default     = 4

  validation {
    condition     = var.cpu_spot_max_nodes >= 1 && var.cpu_spot_max_nodes <= 20
    error_message = "cpu_spot_max_nodes must be between 1 and 20."
  }
}

variable "gpu_instance_types" {
  description = "Spot GPU instance types, one GPU, 4 vCPUs and 16 GiB each (the Ray GPU pod's size)."
  type        = list(string)
  default     = ["g4dn.xlarge", "g5.xlarge", "g6.xlarge"]

  validation {
    condition     = alltrue([for t in var.gpu_instance_types : can(regex("^g[4-6][a-z]*\\.xlarge$", t))])
    error_message = "gpu_instance_types must be single-GPU xlarge instances (g4dn, g5, g6 families)."
  }
}

variable "gpu_max_nodes" {
  description = "Upper bound of the spot GPU node group: the Ray GPU worker group's maxReplicas."
  type        = number
  default     = 5

  validation {
    condition     = var.gpu_max_nodes >= 1 && var.gpu_max_nodes <= 16
    error_message = "gpu_max_nodes must be between 1 and 16."
  }
}

variable "db_instance_class" {
  description = "RDS PostgreSQL instance class of the MLflow backend store."
  type        = string
  default     = "db.t4g.micro"

  validation {
    condition     = startswith(var.db_instance_class, "db.")
    error_message = "db_instance_class must be an RDS class such as db.t4g.micro."
  }
}

variable "db_allocated_storage_gb" {
  description = "Initial RDS storage in GiB; it grows automatically up to 5x."
  type        = number
  default     = 20

  validation {
    condition     = var.db_allocated_storage_gb >= 20 && var.db_allocated_storage_gb <= 1000
    error_message = "db_allocated_storage_gb must be between 20 and 1000."
  }
}

variable "db_backup_retention_days" {
  description = "Days of automated RDS backups (point-in-time restore window)."
  type        = number
  default     = 7

  validation {
    condition     = var.db_backup_retention_days >= 7 && var.db_backup_retention_days <= 35
    error_message = "db_backup_retention_days must be between 7 and 35."
  }
}

variable "artifact_noncurrent_days" {
  description = "Days after which overwritten or deleted artifact versions are removed from S3."
  type        = number
  default     = 90

  validation {
    condition     = var.artifact_noncurrent_days >= 30
    error_message = "artifact_noncurrent_days must be at least 30 (STANDARD_IA minimum storage)."
  }
}

variable "hosted_zone_name" {
  description = "Route 53 public hosted zone of the platform's hostnames, e.g. example.com."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9-]+\\.)+[a-z]{2,}$", var.hosted_zone_name))
    error_message = "hosted_zone_name must be a DNS domain such as example.com."
  }
}

variable "mlflow_host" {
  description = "Hostname of the MLflow UI and API, inside hosted_zone_name."
  type        = string

  validation {
    condition     = endswith(var.mlflow_host, ".${var.hosted_zone_name}")
    error_message = "mlflow_host must be a name inside hosted_zone_name."
  }
}

variable "serve_host" {
  description = "Hostname of the HTTPS inference endpoint, inside hosted_zone_name."
  type        = string

  validation {
    condition     = endswith(var.serve_host, ".${var.hosted_zone_name}")
    error_message = "serve_host must be a name inside hosted_zone_name."
  }
}

variable "enable_ray_gcs_ft" {
  description = "Create an ElastiCache Redis for Ray GCS fault tolerance (the raycluster-gcs-ft overlay)."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Extra tags of every resource."
  type        = map(string)
  default     = {}
}

variable "mlflow_rate_limit" {
  description = "Requests one client IP may send to the MLflow host in 5 minutes before the WAF blocks it (each checks a password)."
  type        = number
  default     = 600

  validation {
    condition     = var.mlflow_rate_limit >= 10
    error_message = "mlflow_rate_limit must be at least 10 (AWS WAF's minimum)."
  }
}

variable "ingress_rate_limit" {
  description = "Requests one client IP may send to either host in 5 minutes before the WAF blocks it."
  type        = number
  default     = 6000

  validation {
    condition     = var.ingress_rate_limit >= 10
    error_message = "ingress_rate_limit must be at least 10 (AWS WAF's minimum)."
  }
}
