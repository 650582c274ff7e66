"""The always-on cost estimate (cluster/terraform/baseline_cost.py): its lines add up, its
quantities follow the Terraform variables, the price table's Ray groups match the manifests and
Terraform, and a resource it cannot price fails it by name."""

from __future__ import annotations

import json
import re
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from app.cost.prices import PriceError, PriceTable, load_prices
from cluster.terraform import baseline_cost
from cluster.terraform.baseline_cost import HOURS, TARGET_USD, BaselineError, Line, Stack
from tests.cluster.clusterlib import KUBERAY, REPO, TERRAFORM, load_hcl, load_yaml

GUIDE = REPO / "docs" / "deploy-aws.md"


@cache
def _table() -> PriceTable:
    return load_prices()


@cache
def _default_lines() -> tuple[Line, ...]:
    return tuple(baseline_cost.estimate(Stack(), _table()))


def _total(lines: Any) -> float:
    return sum(line.monthly for line in lines)


def _lines_with(tmp_path: Path, tfvars: str) -> list[Line]:
    path = tmp_path / "test.tfvars"
    path.write_text(tfvars)
    return baseline_cost.estimate(Stack(tfvars=path), _table())


def _by_item(lines: Any) -> dict[str, Line]:
    found = {line.item: line for line in lines}
    assert len(found) == len(lines), "line items must be unique"
    return found


def test_the_total_is_the_sum_of_the_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert baseline_cost.main(["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total_usd"] == pytest.approx(
        sum(line["monthly_usd"] for line in out["lines"]), abs=0.05
    )
    assert out["total_usd"] == pytest.approx(_total(_default_lines()), abs=0.005)
    assert out["verdict"] == ("OVER" if out["total_usd"] > TARGET_USD else "UNDER")
    assert out["price_table"] == _table().version
    for line in out["lines"]:
        assert line["source"], f"{line['item']}: no source"
        hours = HOURS if line["per_hour"] else 1
        assert line["monthly_usd"] == pytest.approx(
            line["quantity"] * line["rate"] * hours, abs=0.005
        )


def test_the_text_report_shows_the_table_and_the_verdict(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert baseline_cost.main([]) == 0
    out = capsys.readouterr().out
    total = _total(_default_lines())
    assert f"**{total:.2f}**" in out
    assert re.search(rf"Target \${TARGET_USD:.0f}: (OVER|UNDER) by", out)
    for line in _default_lines():
        assert f"| {line.item} |" in out
    for name in _table().ray_groups["gpu"].instance_types:
        assert f"| {name} |" in out


def test_the_default_baseline_against_the_target_is_in_the_guide() -> None:
    """The defaults are over the $190 target (the guide's cost section says by how much and
    why); whichever side they are on, the guide shows the estimator's current total."""
    total = _total(_default_lines())
    verdict = "OVER" if total > TARGET_USD else "UNDER"
    text = GUIDE.read_text()
    assert f"**{total:.2f}**" in text, "docs/deploy-aws.md: paste `make cost-baseline`'s table"
    assert f"{verdict} by ${abs(total - TARGET_USD):.2f}" in text
    assert "python -m cluster.terraform.baseline_cost" in text


def test_the_always_on_items_are_priced() -> None:
    items = " / ".join(line.item for line in _default_lines())
    for expected in (
        "EKS control plane", "NAT gateway", "Node group system", "RDS PostgreSQL", "S3",
        "Application Load Balancers", "WAF web ACL", "KMS", "Route 53", "ECR", "CloudWatch",
    ):  # fmt: skip
        assert expected in items
    lines = _by_item(_default_lines())
    assert lines["Application Load Balancers"].quantity == 2  # Serve's group and MLflow's own
    assert lines["EKS control plane"].quantity == 1
    assert lines["NAT gateway"].quantity == 1
    assert not any("gpu" in line.item.lower() for line in _default_lines())


def test_one_more_system_node_adds_one_instance_month_and_its_disk(tmp_path: Path) -> None:
    more = _lines_with(tmp_path, "system_node_count = { min = 3, max = 4 }\n")
    table = _table()
    variables = load_hcl(TERRAFORM / "variables.tf")["variable"]
    (system_type,) = [
        v["system_instance_type"]["default"] for v in variables if "system_instance_type" in v
    ]
    (node_groups,) = [
        e["node_groups"] for e in load_hcl(TERRAFORM / "eks.tf")["locals"] if "node_groups" in e
    ]
    disk_gb = node_groups["system"]["disk_gb"]
    one_node = table.instance(system_type).hourly("on-demand") * HOURS
    one_disk = disk_gb * table.service("ebs_gp3_gb_month")
    assert _total(more) - _total(_default_lines()) == pytest.approx(one_node + one_disk)
    assert len(more) == len(_default_lines())


def test_gcs_fault_tolerance_adds_redis_and_its_secret(tmp_path: Path) -> None:
    on = _by_item(_lines_with(tmp_path, "enable_ray_gcs_ft = true\n"))
    off = _by_item(_default_lines())
    (redis,) = [item for item in on if item.startswith("ElastiCache")]
    assert off[redis].quantity == 0
    assert on[redis].quantity == 2  # num_cache_clusters in redis.tf
    secrets = "Secrets Manager secrets"
    assert on[secrets].quantity == off[secrets].quantity + 1


def test_the_db_class_follows_the_tfvars_and_an_unpriced_one_fails(tmp_path: Path) -> None:
    small = _by_item(_lines_with(tmp_path, 'db_instance_class = "db.t4g.small"\n'))
    assert "RDS PostgreSQL db.t4g.small Multi-AZ" in small
    with pytest.raises(PriceError, match=r"db\.r6g\.large"):
        _lines_with(tmp_path, 'db_instance_class = "db.r6g.large"\n')


def test_a_region_the_table_does_not_price_fails(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="us-east-1"):
        _lines_with(tmp_path, 'region = "us-east-1"\n')


def _copied_stack(tmp_path: Path, extra: str) -> Path:
    directory = tmp_path / "aws-eks"
    shutil.copytree(TERRAFORM, directory)
    (directory / "extra.tf").write_text(extra)
    return directory


def test_an_unknown_aws_resource_fails_with_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _copied_stack(
        tmp_path,
        'resource "aws_instance" "bastion" {\n  ami = "ami-1"\n  instance_type = "t3.micro"\n}\n',
    )
    with pytest.raises(BaselineError, match="aws_instance") as error:
        baseline_cost.estimate(Stack(directory), _table())
    assert "extra.tf" in str(error.value)
    assert baseline_cost.main(["--terraform-dir", str(directory)]) == 2
    assert "aws_instance" in capsys.readouterr().err


def test_an_interface_endpoint_fails(tmp_path: Path) -> None:
    directory = _copied_stack(
        tmp_path,
        'resource "aws_vpc_endpoint" "ecr" {\n  vpc_id = aws_vpc.main.id\n'
        '  service_name = "com.amazonaws.eu-west-1.ecr.dkr"\n'
        '  vpc_endpoint_type = "Interface"\n}\n',
    )
    with pytest.raises(BaselineError, match=r"aws_vpc_endpoint\.ecr"):
        baseline_cost.estimate(Stack(directory), _table())


def test_every_aws_resource_type_of_the_stack_is_classified() -> None:
    types = {key.split(".")[0] for key in Stack().resources if key.startswith("aws_")}
    assert types <= baseline_cost.FREE | baseline_cost.PRICED
    assert not baseline_cost.FREE & baseline_cost.PRICED


def test_gpu_job_hours_are_priced_apart() -> None:
    rates = baseline_cost.gpu_rates(Stack(), _table())
    assert [r.instance_type for r in rates] == list(_table().ray_groups["gpu"].instance_types)
    for rate in rates:
        assert 0 < rate.spot_hourly < rate.on_demand_hourly
        assert rate.disk_hourly > 0
        assert rate.accelerator


def _variable_default(reference: Any) -> Any:
    match = re.fullmatch(r"\$\{var\.(\w+)(?:\.(\w+))?\}", str(reference))
    if not match:
        return reference
    (default,) = [
        v[match.group(1)]["default"]
        for v in load_hcl(TERRAFORM / "variables.tf")["variable"]
        if match.group(1) in v
    ]
    return default[match.group(2)] if match.group(2) else default


def test_the_price_tables_ray_groups_match_the_manifest_and_terraform() -> None:
    """Each Ray group's market and candidate types are those of the node group its nodeSelector
    lands on, with Terraform's default instance types."""
    (node_groups,) = [
        e["node_groups"] for e in load_hcl(TERRAFORM / "eks.tf")["locals"] if "node_groups" in e
    ]
    by_pool = {g["labels"]["rayvision.io/pool"]: g for g in node_groups.values()}
    cluster = load_yaml(KUBERAY / "raycluster" / "raycluster.yaml")["spec"]
    # KubeRay labels the head's node group "headgroup" (the RAY_NODE_TYPE_NAME it sets).
    pods = {"headgroup": cluster["headGroupSpec"]["template"]["spec"]}
    pods |= {g["groupName"]: g["template"]["spec"] for g in cluster["workerGroupSpecs"]}
    table = _table()
    assert set(table.ray_groups) == set(pods)
    for name, pod in pods.items():
        group = by_pool[pod["nodeSelector"]["rayvision.io/pool"]]
        market = "spot" if group["capacity_type"] == "SPOT" else "on-demand"
        types = [_variable_default(t) for t in _variable_default(group["instance_types"])]
        assert table.ray_groups[name].market == market, name
        assert list(table.ray_groups[name].instance_types) == types, name
        selected = pod["nodeSelector"].get("eks.amazonaws.com/capacityType")
        assert selected in (None, group["capacity_type"]), name
