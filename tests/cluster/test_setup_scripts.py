"""The setup scripts: shellcheck-clean, a --dry-run that prints the commands and runs none of them,
clear messages for a missing tool or missing AWS credentials, and the manifest renderer."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cluster.clusterlib import KUBERAY, REPO, SETUP, kube_version

SCRIPTS = sorted(SETUP.glob("0*.sh"))
BASH = shutil.which("bash") or "/bin/bash"
# Every shell script of the repository, not only the setup ones.
SHELL_FILES = sorted(
    {*(REPO / "cluster").rglob("*.sh"), *(REPO / "benchmarks").glob("*.sh"), REPO / ".ci" / "run"}
)
# Tools the scripts call; in these tests each is a stub that fails loudly if a dry run calls it.
TOOLS = [
    "aws",
    "terraform",
    "kubectl",
    "helm",
    "docker",
    "git",
    "envsubst",
    "openssl",
    "curl",
    "ray",
    "base64",
]
# What each script's dry run must print: its main commands.
EXPECTED = {
    "01-aws-resources.sh": [
        "aws s3api create-bucket",
        # before the apply: the KMS key policy names this role, absent on a new account
        "aws iam create-service-linked-role --aws-service-name autoscaling.amazonaws.com",
        "terraform -chdir=",
        "apply -input=false",
    ],
    "02-cluster.sh": [
        "helm upgrade --install kuberay-operator kuberay/kuberay-operator",
        "helm upgrade --install cluster-autoscaler",
        "docker build -f",
        "create secret generic rayvision-ray-token",
        # the serving cluster's own token and MLflow login (tests/cluster/test_identities.py)
        "create secret generic rayvision-serve-ray-token",
        "create secret generic rayvision-mlflow-serve",
        # the promotion step's MLflow login (MANAGE on the models: moves @champion)
        "create secret generic rayvision-mlflow-promoter",
        # the key of the sweeps' signed Tune state (app/tune/state_signing.py)
        "create secret generic rayvision-tune-state-key",
        "kubectl kustomize",
        "rayservice.yaml | kubectl apply -f -",
    ],
    "03-mlflow.sh": ["helm upgrade --install mlflow", "route53 change-resource-record-sets"],
    "04-users.sh": [
        "-m cluster.mlflow.users --file",
        '{"username":"mlops-1","admin":true}',
        '"experiments":{"batch-inference":"EDIT","cifar10-resnet18":"EDIT","cifar10-sweep":"EDIT","model-evaluation":"EDIT"}',
        # the promotion gate: only the promotion step's user may move @champion
        '{"username":"ray-promote","experiments":{"batch-inference":"EDIT","cifar10-resnet18":"EDIT","cifar10-sweep":"EDIT","model-evaluation":"EDIT"},'
        '"registered_models":{"cifar10-classifier":"MANAGE"}}',
        '{"username":"ray-serve","experiments":{"batch-inference":"READ","cifar10-resnet18":"READ","cifar10-sweep":"READ","model-evaluation":"READ"},'
        '"registered_models":{"cifar10-classifier":"READ"}}',
    ],
    "05-connection-test.sh": ["ray job submit", "status_is 401", "status_is 301"],
    # 06 ends by running 05.
    "06-verify-all.sh": ["eks describe-nodegroup", "no_drift", "ray job submit"],
}


@pytest.fixture
def stub_path(tmp_path: Path) -> Path:
    """A PATH of stubs for the tools (exit 97 and say so) plus the real shell utilities."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        stub = bin_dir / tool
        stub.write_text(f"#!/bin/sh\necho 'STUB {tool} called' >&2\nexit 97\n")
        stub.chmod(0o755)
    for real in ("bash", "jq", "grep", "cut", "sort", "cat", "mktemp", "rm", "sleep"):
        (bin_dir / real).symlink_to(shutil.which(real) or real)
    return bin_dir


def _run(script: Path, path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": str(path), "HOME": str(path.parent), **env}
    return subprocess.run(
        [BASH, script, *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(
    shutil.which("shellcheck") is None,
    reason="shellcheck not installed (apt-get install shellcheck)",
)
def test_shellcheck_is_clean() -> None:
    run = subprocess.run(
        ["shellcheck", "--external-sources", *SHELL_FILES],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_strict_and_share_the_helpers(script: Path) -> None:
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert 'source "${BASH_SOURCE[0]%/*}/lib.sh"' in text
    assert os.access(script, os.X_OK)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_dry_run_prints_the_commands_and_runs_none(script: Path, stub_path: Path) -> None:
    run = _run(script, stub_path, "--dry-run", AWS_REGION="eu-west-1")
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "STUB" not in output, "a dry run called a tool"
    for command in EXPECTED[script.name]:
        assert command in output
    assert "password=" not in output.replace("password=***", ""), "a secret was printed"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_missing_tools_are_named_with_how_to_install(script: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    run = _run(script, bare, AWS_REGION="eu-west-1")
    assert run.returncode == 1
    assert "ERROR: missing required tools:" in run.stderr
    first_tool = run.stderr.split("missing required tools: ")[1].split()[0]
    assert f"\n  {first_tool}: " in run.stderr


@pytest.mark.parametrize("script", ["01-aws-resources.sh", "02-cluster.sh", "06-verify-all.sh"])
def test_missing_aws_credentials_are_reported(script: str, stub_path: Path) -> None:
    run = _run(SETUP / script, stub_path, AWS_REGION="eu-west-1")
    assert run.returncode == 1
    assert "no usable AWS credentials" in run.stderr


def test_missing_region_is_reported(stub_path: Path) -> None:
    run = _run(SETUP / "01-aws-resources.sh", stub_path)
    assert run.returncode == 1
    assert "set AWS_REGION" in run.stderr


def test_help_describes_the_script() -> None:
    run = _run(SETUP / "03-mlflow.sh", Path(BASH).parent, "--help")
    assert run.returncode == 0
    assert "--dry-run" in run.stdout
    assert "MLflow" in run.stdout


def test_unknown_flag_is_refused() -> None:
    run = _run(SETUP / "05-connection-test.sh", Path(BASH).parent, "--yes")
    assert run.returncode == 1
    assert "unknown argument: --yes" in run.stderr


@pytest.mark.skipif(shutil.which("envsubst") is None, reason="envsubst (gettext-base) missing")
def test_render_manifest_refuses_an_unset_placeholder() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAYVISION_")}
    run = subprocess.run(
        [
            "bash",
            "-c",
            'source "$0" && render_manifest "$1"',
            SETUP / "lib.sh",
            KUBERAY / "serve-ingress.yaml",
        ],
        env={**env, "RAYVISION_SERVE_HOST": "inference.example.com"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1
    assert "RAYVISION_CERT_ARN is not set" in run.stderr


@pytest.mark.skipif(shutil.which("envsubst") is None, reason="envsubst (gettext-base) missing")
def test_render_manifest_leaves_runtime_variables_alone() -> None:
    run = subprocess.run(
        [
            "bash",
            "-c",
            'source "$0" && render_manifest "$1"',
            SETUP / "lib.sh",
            KUBERAY / "rayjob-train.yaml",
        ],
        env={**os.environ, "RAYVISION_IMAGE": "img:1", "RAYVISION_STORAGE_PATH": "s3://wrong"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "image: img:1" in run.stdout
    assert "$RAYVISION_STORAGE_PATH/train" in run.stdout


def test_every_chart_is_installed_at_a_pinned_version(stub_path: Path) -> None:
    """An unpinned `helm upgrade --install` takes whatever the chart repository has that day."""
    run = _run(SETUP / "02-cluster.sh", stub_path, "--dry-run", AWS_REGION="eu-west-1")
    installs = [line for line in run.stderr.splitlines() if "helm upgrade --install" in line]
    assert len(installs) >= 5
    for line in installs:
        assert re.search(r" --version \d+\.\d+\.\d+( |$)", line), line


def test_the_cluster_autoscaler_is_the_clusters_kubernetes_minor() -> None:
    (app,) = re.findall(
        r"^CLUSTER_AUTOSCALER_CHART_VERSION=\S+ +# cluster-autoscaler (\d+\.\d+)\.",
        (SETUP / "lib.sh").read_text(),
        re.M,
    )
    assert app == kube_version()


def test_service_linked_roles_the_key_policy_names_exist_before_the_apply(
    stub_path: Path,
) -> None:
    """A key policy naming a principal that does not exist is refused: on a new account, the
    service-linked roles kms.tf names must be created before Terraform makes the key."""
    kms = (REPO / "cluster" / "terraform" / "aws-eks" / "kms.tf").read_text()
    services = set(re.findall(r":role/aws-service-role/([a-z.]+\.amazonaws\.com)/", kms))
    assert services, "kms.tf names no service-linked role"
    run = _run(SETUP / "01-aws-resources.sh", stub_path, "--dry-run", AWS_REGION="eu-west-1")
    apply = run.stderr.index("apply -input=false")
    for service in services:
        created = f"aws iam create-service-linked-role --aws-service-name {service}"
        assert created in run.stderr[:apply], f"{service}'s role is not created before the apply"
