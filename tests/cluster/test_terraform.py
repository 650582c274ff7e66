"""The EKS stack and the images, checked statically: every Terraform file parses, checkov finds no
failed check (skips only next to their resource, with a reason), and the stack's node groups,
database and bucket are the ones the platform relies on."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from tests.cluster.clusterlib import (
    CLUSTER,
    KUBERAY,
    TERRAFORM,
    load_hcl,
    load_yaml,
    terraform_blocks,
    worker_group,
)

TF_FILES = sorted(TERRAFORM.glob("*.tf"))
DOCKER = CLUSTER / "docker"


def _checkov() -> str | None:
    """checkov from CHECKOV (the Makefile points it at the venv `make cluster-tools` makes), that
    venv itself (a plain pytest run), or PATH."""
    made = sorted(Path.home().glob(".cache/rayvision/venv-checkov-*/bin/checkov"))
    for candidate in (os.environ.get("CHECKOV"), *made):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return shutil.which("checkov")


@pytest.mark.parametrize("path", TF_FILES, ids=lambda p: p.name)
def test_terraform_file_parses(path: Path) -> None:
    assert load_hcl(path)


@cache
def _checkov_report() -> list[dict[str, Any]]:
    """checkov's results for the Terraform stack and for the Dockerfiles."""
    checkov = _checkov()
    if checkov is None:
        pytest.skip("checkov not installed: run `make cluster-tools` (or set CHECKOV)")
    reports = []
    for directory, framework in ((TERRAFORM, "terraform"), (DOCKER, "dockerfile")):
        # --skip-download: offline, no guideline or policy downloads.
        run = subprocess.run(
            [
                checkov,
                "--directory",
                directory,
                "--framework",
                framework,
                "--output",
                "json",
                "--skip-download",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        reports.append(json.loads(run.stdout))
    return reports


def test_checkov_finds_no_failed_check() -> None:
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']})"
        for framework in _checkov_report()
        for c in framework["results"]["failed_checks"]
    ]
    assert failed == []
    passed = sum(len(f["results"]["passed_checks"]) for f in _checkov_report())
    assert passed > 200, "checkov scanned far fewer resources than the stack has"


def test_every_checkov_skip_has_a_reason() -> None:
    skipped = [c for f in _checkov_report() for c in f["results"]["skipped_checks"]]
    assert skipped, "expected the documented skips"
    for check in skipped:
        reason = check["check_result"].get("suppress_comment", "").strip()
        assert len(reason) > 20, f"{check['check_id']} on {check['resource']} has no reason"
    # Skips live in the files, next to their resource; none is hidden in a config file.
    assert not list(CLUSTER.rglob(".checkov.y*ml"))


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform not installed")
def test_terraform_is_formatted() -> None:
    run = subprocess.run(
        ["terraform", f"-chdir={TERRAFORM}", "fmt", "-check", "-diff"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout


def _node_groups() -> dict[str, Any]:
    (node_groups,) = [
        entry["node_groups"]
        for entry in load_hcl(TERRAFORM / "eks.tf")["locals"]
        if "node_groups" in entry
    ]
    return node_groups


def _variable_default(reference: Any) -> Any:
    """The default of `${var.NAME}` or `${var.NAME.ATTRIBUTE}`, or the value itself."""
    match = re.fullmatch(r"\$\{var\.(\w+)(?:\.(\w+))?\}", str(reference))
    if not match:
        return reference
    default = terraform_blocks("variable")[match.group(1)]["default"]
    return default[match.group(2)] if match.group(2) else default


def test_gpu_node_group_matches_the_ray_gpu_worker_group() -> None:
    group = _node_groups()["gpu-spot"]
    ray_gpu = worker_group(load_yaml(KUBERAY / "raycluster" / "raycluster.yaml")["spec"], "gpu")
    pod = ray_gpu["template"]["spec"]
    assert group["capacity_type"] == pod["nodeSelector"]["eks.amazonaws.com/capacityType"]
    assert group["ami_type"] == "AL2023_x86_64_NVIDIA"
    assert group["min_size"] == ray_gpu["minReplicas"]
    assert _variable_default(group["max_size"]) == ray_gpu["maxReplicas"]
    selected = {k: v for k, v in pod["nodeSelector"].items() if k.startswith("rayvision.io/")}
    assert selected == {k: v for k, v in group["labels"].items() if k.startswith("rayvision.io/")}
    taints = {(t["key"], t["value"], "NoSchedule") for t in group["taints"]}
    assert all(t["effect"] == "NO_SCHEDULE" for t in group["taints"])
    tolerated = {(t["key"], t["value"], t["effect"]) for t in pod["tolerations"]}
    assert taints == tolerated, "every taint of the GPU nodes must be tolerated, and only those"


def test_every_ray_group_lands_on_a_node_group() -> None:
    cluster = load_yaml(KUBERAY / "raycluster" / "raycluster.yaml")["spec"]
    pools = {g["labels"]["rayvision.io/pool"] for g in _node_groups().values()}
    pods = [cluster["headGroupSpec"]["template"]["spec"]]
    pods += [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    assert {pod["nodeSelector"]["rayvision.io/pool"] for pod in pods} <= pools


def test_system_nodes_are_two_small_on_demand_nodes() -> None:
    system = _node_groups()["system"]
    assert system["capacity_type"] == "ON_DEMAND"
    assert _variable_default(system["min_size"]) == 2
    assert system["taints"] == []


def test_database_is_multi_az_encrypted_private_and_backed_up() -> None:
    db = terraform_blocks("resource")["aws_db_instance.mlflow"]
    assert db["multi_az"] is True
    assert db["storage_encrypted"] is True
    assert db["publicly_accessible"] is False
    assert db["manage_master_user_password"] is True, "no database password in Terraform state"
    assert db["deletion_protection"] is True
    assert _variable_default(db["backup_retention_period"]) >= 7
    assert db["engine"] == "postgres"


def test_bucket_is_versioned_encrypted_private_with_lifecycle() -> None:
    resources = terraform_blocks("resource")
    versioning = resources["aws_s3_bucket_versioning.artifacts"]["versioning_configuration"]
    assert versioning[0]["status"] == "Enabled"
    block = resources["aws_s3_bucket_public_access_block.artifacts"]
    assert all(
        block[k] is True
        for k in (
            "block_public_acls",
            "block_public_policy",
            "ignore_public_acls",
            "restrict_public_buckets",
        )
    )
    encryption = resources["aws_s3_bucket_server_side_encryption_configuration.artifacts"]
    assert encryption["rule"][0]["apply_server_side_encryption_by_default"][0]["sse_algorithm"] == (
        "aws:kms"
    )
    rules = resources["aws_s3_bucket_lifecycle_configuration.artifacts"]["rule"]
    old_versions = next(r for r in rules if r["id"] == "expire-old-versions")
    assert old_versions["noncurrent_version_expiration"]


def test_service_account_roles_match_the_manifests() -> None:
    (irsa,) = [e["irsa"] for e in load_hcl(TERRAFORM / "iam.tf")["locals"] if "irsa" in e]
    accounts = {
        doc["metadata"]["name"]: doc["metadata"]
        for doc in yaml.safe_load_all((KUBERAY / "serviceaccount.yaml").read_text())
    }
    ray_account = accounts["rayvision-ray"]
    assert (irsa["ray"]["namespace"], irsa["ray"]["service_account"]) == (
        ray_account["namespace"],
        ray_account["name"],
    )
    assert ray_account["annotations"]["eks.amazonaws.com/role-arn"]
    # The serving cluster's account has no role, and no role trusts it.
    assert "annotations" not in accounts["rayvision-serve"]
    assert "rayvision-serve" not in {entry["service_account"] for entry in irsa.values()}
    chart_values = load_yaml(CLUSTER / "charts" / "mlflow" / "values.yaml")
    assert irsa["mlflow"]["service_account"] == chart_values["serviceAccount"]["name"]


def test_kubernetes_version_is_validated_and_supported() -> None:
    version = terraform_blocks("variable")["kubernetes_version"]
    assert int(version["default"].split(".")[1]) >= 30
    assert "validation" in version


def test_required_variables_are_in_the_example_tfvars() -> None:
    example = (TERRAFORM / "terraform.tfvars.example").read_text()
    for name, body in terraform_blocks("variable").items():
        assert "description" in body, f"variable {name} has no description"
        if "default" not in body:
            assert re.search(rf"^{name}\s*=", example, re.MULTILINE), name


def test_image_versions_agree_with_the_installed_ray() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert base == f"rayproject/ray:{ray.__version__}-py311-gpu"
    cluster = load_yaml(KUBERAY / "raycluster" / "raycluster.yaml")
    assert cluster["spec"]["rayVersion"] == ray.__version__
    assert "requirements.lock" in dockerfile


def _matches(term: dict[str, Any], labels: dict[str, str]) -> bool:
    """A nodeSelectorTerm's matchExpressions (In, Exists) against a node's labels."""
    for expression in term["matchExpressions"]:
        value = labels.get(expression["key"])
        if expression["operator"] == "In" and value not in expression["values"]:
            return False
        if expression["operator"] == "Exists" and value is None:
            return False
        assert expression["operator"] in ("In", "Exists"), expression
    return True


def test_the_nvidia_device_plugin_can_run_on_the_gpu_nodes() -> None:
    """Its chart's default affinity (vendored at the pinned version) and the nodeSelector
    02-cluster.sh adds, both against the labels the GPU node group gives its nodes: without a
    match, the DaemonSet runs nowhere and no pod ever sees a GPU."""
    affinity = load_yaml(CLUSTER / "addons" / "nvidia-device-plugin-affinity.yaml")["affinity"]
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    labels = _node_groups()["gpu-spot"]["labels"]
    assert any(_matches(term, labels) for term in terms["nodeSelectorTerms"]), labels
    script = (CLUSTER / "scripts" / "setup" / "02-cluster.sh").read_text()
    plugin = script[script.index("nvidia-device-plugin nvdp/") :].split("\nrun ", 1)[0]
    selector = dict(re.findall(r'nodeSelector\.([\w\\.]+/\w+)=([\w-]+)"', plugin))
    assert {k.replace("\\.", "."): v for k, v in selector.items()}.items() <= labels.items()


def test_the_load_balancer_controller_has_its_pinned_versions_own_policy() -> None:
    """The IAM policy of the controller's role is the upstream file of the pinned controller,
    byte for byte as vendored (its digest is recorded beside it)."""
    (irsa,) = [e["irsa"] for e in load_hcl(TERRAFORM / "iam.tf")["locals"] if "irsa" in e]
    vendored = CLUSTER / "addons" / "aws-load-balancer-controller-iam-policy.json"
    policy = irsa["aws-load-balancer-controller"]["policy"]
    relative = os.path.relpath(vendored, TERRAFORM)
    assert policy == f'${{jsonencode(jsondecode(file("${{path.module}}/{relative}")))}}'
    readme = (CLUSTER / "addons" / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith(f"| `{vendored.name}`"))
    assert hashlib.sha256(vendored.read_bytes()).hexdigest() in row
    pinned = (CLUSTER / "scripts" / "setup" / "lib.sh").read_text()
    (version,) = re.findall(
        r"^AWS_LB_CONTROLLER_CHART_VERSION=\S+ +# aws-load-balancer-controller (v\S+)", pinned, re.M
    )
    assert f"| {version} (commit" in row
    # What the narrower hand-written policy could not do: open the cluster's security group.
    statements = json.loads(vendored.read_text())["Statement"]
    assert any(
        "ec2:AuthorizeSecurityGroupIngress" in st["Action"]
        and st["Resource"] == "*"
        and "Condition" not in st
        for st in statements
    )


def test_both_hosts_sit_behind_per_client_rate_rules() -> None:
    acl = terraform_blocks("resource")["aws_wafv2_web_acl.ingress"]
    assert acl["scope"] == "REGIONAL"
    rules = {rule["name"]: rule for rule in acl["rule"]}
    assert set(rules) == {"mlflow-per-client", "all-per-client"}
    rates = {}
    for name, rule in rules.items():
        assert rule["action"] == [{"block": [{}]}]
        ((rate,),) = [s["rate_based_statement"] for s in rule["statement"]]
        assert (rate["aggregate_key_type"], rate["evaluation_window_sec"]) == ("IP", 300)
        rates[name] = rate
    # The tighter limit counts the MLflow host's requests only.
    ((scope,),) = [
        s["byte_match_statement"] for s in rates["mlflow-per-client"]["scope_down_statement"]
    ]
    assert (scope["search_string"], scope["positional_constraint"]) == (
        "${var.mlflow_host}",
        "EXACTLY",
    )
    assert scope["field_to_match"] == [{"single_header": [{"name": "host"}]}]
    assert rates["mlflow-per-client"]["limit"] == "${var.mlflow_rate_limit}"
    assert "scope_down_statement" not in rates["all-per-client"]
    variables = terraform_blocks("variable")
    assert variables["mlflow_rate_limit"]["default"] < variables["ingress_rate_limit"]["default"]
    # Both ingresses name the ACL: the Serve ingress and the chart (03-mlflow.sh passes it).
    assert "wafv2-acl-arn: ${RAYVISION_WAF_ACL_ARN}" in (KUBERAY / "serve-ingress.yaml").read_text()
    setup = CLUSTER / "scripts" / "setup"
    assert 'ingress.wafAclArn="$(tf_output waf_acl_arn)"' in (setup / "03-mlflow.sh").read_text()
    assert "waf_acl_arn" in terraform_blocks("output")


def test_network_policies_are_enforced_by_the_cni() -> None:
    addon = terraform_blocks("resource")["aws_eks_addon.core"]
    assert "enableNetworkPolicy" in addon["configuration_values"]
