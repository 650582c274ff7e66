"""What the platform costs a month with no job running: the Terraform stack (its variables'
defaults, or a tfvars file's values), the load balancers its ingresses create and the Serve
replicas' always-up node, priced from app/cost/prices.yaml over 730 hours.

    python -m cluster.terraform.baseline_cost [--tfvars FILE] [--json]

Every aws_* resource type of the stack must be known here, as priced or as free: a new one
fails the estimate with its name, so the figure cannot go stale in silence. GPU and CPU job
nodes are not in the baseline (each run is priced by app/cost); the per-job-hour GPU rates are
printed apart. Data transfer out of AWS is not priced.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hcl2
import yaml

from app.cost.prices import PriceError, PriceTable, load_prices

REPO = Path(__file__).resolve().parents[2]
TERRAFORM = REPO / "cluster" / "terraform" / "aws-eks"
SERVE_INGRESS = REPO / "cluster" / "kuberay" / "serve-ingress.yaml"
MLFLOW_VALUES = REPO / "cluster" / "charts" / "mlflow" / "values.yaml"
RAYSERVICE = REPO / "cluster" / "kuberay" / "rayservice.yaml"
HOURS = 730  # a month
TARGET_USD = 190.0  # the mission's budget for the always-on platform

# Quantities nothing in the repository fixes: assumptions, stated on their lines.
S3_GB = 100  # artifacts, checkpoints, noncurrent versions (expire after artifact_noncurrent_days)
ECR_GB = 20  # two repositories, 10 images kept each; layers shared, the Ray image (CUDA) dominates
NAT_GB = 50  # through the NAT: image pulls (no ECR endpoint), dataset downloads; S3 bypasses it
LOG_GB = 10  # CloudWatch ingestion: EKS control-plane logs (audit dominates), flow logs, RDS logs
ALB_LCU = 1.0  # load balancer capacity units per ALB, averaged (a lightly used ALB: about 1)
WAF_MILLION_REQUESTS = 1.0

# Resource types that cost nothing themselves, or whose cost is on another type's line
# (aws_launch_template: root volumes, with the node groups; aws_route53_record: with the zone).
FREE = frozenset(
    """
    aws_acm_certificate aws_acm_certificate_validation aws_autoscaling_group_tag
    aws_db_parameter_group aws_db_subnet_group aws_default_security_group aws_ecr_lifecycle_policy
    aws_eks_addon aws_elasticache_subnet_group aws_iam_openid_connect_provider aws_iam_policy
    aws_iam_role aws_iam_role_policy aws_iam_role_policy_attachment aws_internet_gateway
    aws_kms_alias aws_launch_template aws_route aws_route53_record aws_route_table
    aws_route_table_association aws_s3_bucket_lifecycle_configuration
    aws_s3_bucket_ownership_controls aws_s3_bucket_policy aws_s3_bucket_public_access_block
    aws_s3_bucket_server_side_encryption_configuration aws_s3_bucket_versioning
    aws_secretsmanager_secret_version aws_security_group aws_subnet aws_vpc
    aws_vpc_security_group_egress_rule aws_vpc_security_group_ingress_rule
    """.split()  # noqa: SIM905
)
# Resource types that cost money, each priced by a line of estimate() (aws_vpc_endpoint: Gateway
# endpoints only, which are free; an Interface endpoint fails the estimate).
PRICED = frozenset(
    """
    aws_cloudwatch_log_group aws_db_instance aws_ecr_repository aws_eip aws_eks_cluster
    aws_eks_node_group aws_elasticache_replication_group aws_flow_log aws_kms_key aws_nat_gateway
    aws_s3_bucket aws_secretsmanager_secret aws_vpc_endpoint aws_wafv2_web_acl
    """.split()  # noqa: SIM905
)


class BaselineError(ValueError):
    """The stack holds something the estimator cannot price."""


@dataclass(frozen=True)
class Line:
    item: str
    quantity: float
    unit: str  # what one of `quantity` is
    rate: float  # USD per unit, an hour when per_hour
    per_hour: bool
    source: str  # where the quantity came from

    @property
    def monthly(self) -> float:
        return self.quantity * self.rate * (HOURS if self.per_hour else 1)


@dataclass(frozen=True)
class GpuRate:
    instance_type: str
    accelerator: str | None
    spot_hourly: float
    on_demand_hourly: float
    disk_hourly: float  # the node's root volume while it exists


def _load_hcl(path: Path) -> dict[str, Any]:
    options = hcl2.SerializationOptions(
        with_comments=False, explicit_blocks=False, strip_string_quotes=True
    )
    with path.open() as file:
        return dict(hcl2.load(file, serialization_options=options))


class Stack:
    """The Terraform stack's resources, data sources, locals and variable values."""

    def __init__(self, directory: Path = TERRAFORM, tfvars: Path | None = None) -> None:
        self.resources: dict[str, dict[str, Any]] = {}  # "TYPE.NAME" -> body
        self.data: dict[str, dict[str, Any]] = {}
        self.files: dict[str, str] = {}  # "TYPE.NAME" -> file name
        self.locals: dict[str, Any] = {}
        defaults: dict[str, Any] = {}
        for path in sorted(directory.glob("*.tf")):
            parsed = _load_hcl(path)
            for kind, into in (("resource", self.resources), ("data", self.data)):
                for entry in parsed.get(kind, []):
                    for rtype, named in entry.items():
                        for name, body in named.items():
                            into[f"{rtype}.{name}"] = body
                            self.files[f"{rtype}.{name}"] = path.name
            for entry in parsed.get("variable", []):
                defaults.update({name: body.get("default") for name, body in entry.items()})
            for entry in parsed.get("locals", []):
                self.locals.update(entry)
        if not self.resources:
            raise BaselineError(f"{directory}: no Terraform resources found")
        overrides = _load_hcl(tfvars) if tfvars else {}
        self.vars = {**defaults, **overrides}
        self.origin = {name: tfvars.name for name in overrides} if tfvars else {}

    def var_text(self, name: str) -> str:
        return f"var.{name}={self.vars.get(name)} ({self.origin.get(name, 'default')})"

    def resolve(self, value: Any) -> Any:
        """`${var.NAME}` / `${var.NAME.ATTR}` to its value (lists element-wise); else as is."""
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        match = re.fullmatch(r"\$\{var\.(\w+)(?:\.(\w+))?\}", str(value))
        if not match:
            return value
        found = self.vars[match.group(1)]
        return found[match.group(2)] if match.group(2) else found

    def of_type(self, rtype: str) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from ((k, b) for k, b in self.resources.items() if k.split(".")[0] == rtype)

    def zones(self) -> int:
        for body in self.data.values():
            for f in body.get("filter", []):
                if f.get("name") == "zone-name":
                    return len(f["values"])
        raise BaselineError("no aws_availability_zones filter on zone-name: zone count unknown")

    def instances(self, key: str) -> int:
        """How many instances a resource block makes (count / for_each / one)."""
        body = self.resources[key]
        if "count" in body:
            count = self.resolve(body["count"])
            if isinstance(count, int):
                return count
            if m := re.fullmatch(r"\$\{var\.(\w+) \? (\d+) : (\d+)\}", str(count)):
                return int(m.group(2) if self.vars[m.group(1)] else m.group(3))
            if str(count) == "${length(local.azs)}":
                return self.zones()
        elif "for_each" in body:
            each = str(body["for_each"])
            if m := re.fullmatch(r"\$\{toset\(\[(.*)\]\)\}", each):  # commas outside ${...}
                return len([i for i in re.split(r",(?![^{]*\})", m.group(1)) if i.strip()])
            if m := re.fullmatch(r"\$\{local\.(\w+)\}", each):
                return len(self.locals[m.group(1)])
        else:
            return 1
        raise BaselineError(
            f"{self.files[key]}: cannot count {key} ({body.get('count', body.get('for_each'))})"
        )

    def count(self, rtype: str) -> int:
        return sum(self.instances(key) for key, _ in self.of_type(rtype))

    def check_known(self) -> None:
        unknown = sorted(
            f"{key.split('.')[0]} ({self.files[key]}: {key})"
            for key in self.resources
            if key.startswith("aws_") and key.split(".")[0] not in FREE | PRICED
        )
        if unknown:
            raise BaselineError(
                "resource types the baseline estimator does not know (price them in "
                f"cluster/terraform/baseline_cost.py, or list them as free): {', '.join(unknown)}"
            )
        for key, body in self.of_type("aws_vpc_endpoint"):
            if body.get("vpc_endpoint_type") != "Gateway":
                raise BaselineError(f"{key}: an Interface VPC endpoint is not priced")


def _load_balancers() -> list[tuple[str, str, str]]:
    """(ingress group, scheme, source) of each ALB the ingresses create: one per group name."""
    serve = yaml.safe_load(SERVE_INGRESS.read_text())["metadata"]["annotations"]
    prefix = "alb.ingress.kubernetes.io/"
    found = {serve[f"{prefix}group.name"]: (serve[f"{prefix}scheme"], SERVE_INGRESS.name)}
    chart = yaml.safe_load(MLFLOW_VALUES.read_text())["ingress"]
    if chart["enabled"]:
        found.setdefault(chart["groupName"], (chart["scheme"], "charts/mlflow/values.yaml"))
    return [(group, scheme, source) for group, (scheme, source) in found.items()]


def _node_groups(stack: Stack) -> dict[str, dict[str, Any]]:
    groups = stack.locals.get("node_groups")
    if not groups:
        raise BaselineError("eks.tf: local.node_groups not found")
    return {name: {k: stack.resolve(v) for k, v in spec.items()} for name, spec in groups.items()}


def _node_lines(stack: Stack, table: PriceTable) -> list[Line]:
    """The nodes always up: each node group's minimum, and one node per always-up RayService
    worker on a group that scales from 0 (a Serve worker asks for most of a node)."""
    groups, lines = _node_groups(stack), []
    held = [(f"Node group {n}", n, int(g["min_size"])) for n, g in groups.items()]
    service = next(d for d in yaml.safe_load_all(RAYSERVICE.read_text()) if d)
    for worker in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        pool = worker["template"]["spec"]["nodeSelector"]["rayvision.io/pool"]
        if groups[pool]["min_size"] == 0:
            held.append(("Serve replicas' node", pool, int(worker.get("minReplicas", 0))))
    for what, pool, nodes in held:
        if nodes:
            # The dearest candidate type on the group's market: a figure errs high, never low.
            market = "spot" if groups[pool]["capacity_type"] == "SPOT" else "on-demand"
            types = [table.instance(name) for name in groups[pool]["instance_types"]]
            price = max(types, key=lambda p: p.hourly(market))
            source = f"eks.tf node_groups.{pool}.min_size"
            if pool == "system":
                source = f"{stack.var_text('system_instance_type')}; var.system_node_count.min"
            if what.startswith("Serve"):
                source = f"rayservice.yaml minReplicas; dearest of node group {pool}"
            item = f"{what}: {price.name} {market}"
            lines.append(Line(item, nodes, "node", price.hourly(market), True, source))
            disk = nodes * groups[pool]["disk_gb"]
            source = f"eks.tf node_groups.{pool}.disk_gb x {nodes}"
            lines.append(Line(f"{what}: root volumes gp3", disk, "GB-month",
                              table.service("ebs_gp3_gb_month"), False, source))  # fmt: skip
    return lines


def estimate(stack: Stack, table: PriceTable) -> list[Line]:
    """The always-on lines of the stack, priced."""
    stack.check_known()
    if stack.vars.get("region") != table.region:
        raise BaselineError(f"region {stack.vars.get('region')}: the prices are {table.region}'s")
    count, var = stack.count, stack.var_text
    head = [
        ("EKS control plane", count("aws_eks_cluster"), "cluster", "eks_cluster_hourly",
         f"eks.tf; {var('kubernetes_version')}"),
        ("NAT gateway", count("aws_nat_gateway"), "gateway", "nat_gateway_hourly",
         "network.tf (one for both zones)"),
        ("NAT data processed", NAT_GB, "GB", "nat_gateway_per_gb", "assumed NAT_GB"),
    ]  # fmt: skip
    rows: list[tuple[str, float, str, str, str]] = []
    managed_secrets = 0
    for key, db in stack.of_type("aws_db_instance"):
        if db.get("engine") != "postgres":
            raise BaselineError(f"{key}: only PostgreSQL is priced, not {db.get('engine')}")
        klass, multi = stack.resolve(db["instance_class"]), bool(stack.resolve(db.get("multi_az")))
        az, storage = "multi_az_" if multi else "", float(stack.resolve(db["allocated_storage"]))
        rows += [
            (f"RDS PostgreSQL {klass}{' Multi-AZ' * multi}", stack.instances(key), "instance",
             f"rds_postgres_{az}hourly_{klass}", f"rds.tf; {var('db_instance_class')}"),
            ("RDS storage gp3", storage, "GB-month", f"rds_gp3_{az}gb_month",
             var("db_allocated_storage_gb")),
        ]  # fmt: skip
        managed_secrets += bool(db.get("manage_master_user_password"))
    for key, redis in stack.of_type("aws_elasticache_replication_group"):
        nodes = stack.instances(key) * int(redis.get("num_cache_clusters", 1))
        rows.append((f"ElastiCache Redis {redis['node_type']}", nodes, "node",
                     f"elasticache_hourly_{redis['node_type']}",
                     f"redis.tf num_cache_clusters; {var('enable_ray_gcs_ft')}"))  # fmt: skip
    albs = _load_balancers()
    public = sum(scheme == "internet-facing" for _, scheme, _ in albs)
    ingresses = "ingress groups: " + ", ".join(f"{g} ({s}, {f})" for g, s, f in albs)
    ips = count("aws_eip") + public * stack.zones()
    acls = [body for _, body in stack.of_type("aws_wafv2_web_acl")]
    rules = sum(len(acl.get("rule", [])) for acl in acls)
    zones = sum(key.startswith("aws_route53_zone.") for key in stack.data)
    secrets = managed_secrets + count("aws_secretsmanager_secret")
    logs = count("aws_cloudwatch_log_group")
    rows += [
        ("Secrets Manager secrets", secrets, "secret-month", "secretsmanager_secret_month",
         "rds.tf managed master password; redis.tf auth token"),
        ("S3 Standard storage", S3_GB, "GB-month", "s3_standard_gb_month",
         f"assumed S3_GB; {count('aws_s3_bucket')} bucket (s3.tf)"),
        ("Application Load Balancers", len(albs), "ALB", "alb_hourly", ingresses),
        ("ALB capacity units", len(albs) * ALB_LCU, "LCU", "alb_lcu_hourly", "assumed ALB_LCU"),
        ("Public IPv4 addresses", ips, "address", "public_ipv4_hourly",
         "network.tf aws_eip; one per zone of each internet-facing ALB"),
        ("WAF web ACL", len(acls), "ACL-month", "waf_web_acl_month", "waf.tf (on both ALBs)"),
        ("WAF rules", rules, "rule-month", "waf_rule_month", "waf.tf rule blocks"),
        ("WAF requests", WAF_MILLION_REQUESTS, "M requests", "waf_million_requests",
         "assumed WAF_MILLION_REQUESTS"),
        ("KMS customer-managed keys", count("aws_kms_key"), "key-month", "kms_key_month",
         "kms.tf"),
        ("Route 53 hosted zone", zones, "zone-month", "route53_hosted_zone_month",
         "acm.tf data source: an existing zone"),
        ("ECR image storage", ECR_GB, "GB-month", "ecr_gb_month",
         f"assumed ECR_GB; {count('aws_ecr_repository')} repositories (ecr.tf)"),
    ]  # fmt: skip
    if logs or count("aws_flow_log"):
        rows.append(("CloudWatch Logs ingestion", LOG_GB, "GB", "cloudwatch_logs_ingest_gb",
                     f"assumed LOG_GB; {logs} log groups + RDS log exports"))  # fmt: skip
    return _priced(head, table) + _node_lines(stack, table) + _priced(rows, table)


def _priced(rows: Sequence[tuple[str, float, str, str, str]], table: PriceTable) -> list[Line]:
    """(item, quantity, unit, service rate name, source) rows as lines: "hourly" rates x 730."""
    return [Line(i, q, u, table.service(r), "hourly" in r, s) for i, q, u, r, s in rows]


def gpu_rates(stack: Stack, table: PriceTable) -> list[GpuRate]:
    """A GPU node's cost per job-hour, by instance type of the GPU node group."""
    rates = []
    for group in _node_groups(stack).values():
        for name in group["instance_types"]:
            price = table.instance(name)
            disk = group["disk_gb"] * table.service("ebs_gp3_gb_month") / HOURS
            if price.gpus:
                rates.append(GpuRate(name, price.accelerator, price.spot_hourly,
                                     price.on_demand_hourly, disk))  # fmt: skip
    return rates


def verdict(total: float) -> str:
    return "OVER" if total > TARGET_USD else "UNDER"


def report(lines: list[Line], gpus: list[GpuRate], table: PriceTable) -> str:
    total = sum(line.monthly for line in lines)
    out = [
        f"Always-on platform, {table.region}, {HOURS} h a month, prices {table.version} "
        f"({table.currency}):",
        "",
        "| Item | Quantity | Unit rate | $/month | From |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for x in lines:
        rate = f"{x.rate:.4f}/h" if x.per_hour else f"{x.rate:.3f}"
        out.append(
            f"| {x.item} | {x.quantity:g} {x.unit} | {rate} | {x.monthly:.2f} | {x.source} |"
        )
    out += [
        f"| **Total** | | | **{total:.2f}** | |",
        "",
        f"Target ${TARGET_USD:.0f}: {verdict(total)} by ${abs(total - TARGET_USD):.2f}",
        "",
        "GPU nodes, per job-hour (not in the baseline; node + its root volume):",
        "",
        "| Instance | GPU | Spot $/h | On-demand $/h |",
        "| --- | --- | ---: | ---: |",
    ]
    for g in gpus:
        spot, on_demand = g.spot_hourly + g.disk_hourly, g.on_demand_hourly + g.disk_hourly
        out.append(f"| {g.instance_type} | {g.accelerator} | {spot:.4f} | {on_demand:.4f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tfvars", type=Path, help="a tfvars file overriding the defaults")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--terraform-dir", type=Path, default=TERRAFORM)
    parser.add_argument("--prices", type=Path, help="a price table other than the packaged one")
    args = parser.parse_args(argv)
    try:
        table = load_prices(args.prices)
        stack = Stack(args.terraform_dir, args.tfvars)
        lines, gpus = estimate(stack, table), gpu_rates(stack, table)
    except (BaselineError, PriceError, OSError) as exc:
        print(f"baseline_cost: {exc}", file=sys.stderr)
        return 2
    if args.json:
        total = sum(line.monthly for line in lines)
        print(json.dumps({
            "price_table": table.version, "region": table.region, "hours": HOURS,
            "lines": [{**asdict(x), "monthly_usd": round(x.monthly, 2)} for x in lines],
            "total_usd": round(total, 2), "target_usd": TARGET_USD, "verdict": verdict(total),
            "gpu_per_job_hour": [asdict(g) for g in gpus],
        }, indent=2))  # fmt: skip
    else:
        print(report(lines, gpus, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
