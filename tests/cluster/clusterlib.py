"""Shared helpers for the deployment tests: paths, manifest rendering, schema validation."""

from __future__ import annotations

import copy
import functools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import helm_python as helm
import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
# The pinned operator's CRDs, vendored (crds/README.md says from where).
CRDS = KUBERAY / "crds"
CHART = CLUSTER / "charts" / "mlflow"
TERRAFORM = CLUSTER / "terraform" / "aws-eks"
SETUP = CLUSTER / "scripts" / "setup"

# Example deploy-time values for the ${VAR} placeholders that render_manifest fills in.
EXAMPLE_VARS = {
    "RAYVISION_IMAGE": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rayvision:2.60.0-abc1234",
    "RAYVISION_RAY_ROLE_ARN": "arn:aws:iam::123456789012:role/rayvision-ray",
    "RAYVISION_REDIS_ADDRESS": "rediss://rayvision-gcs.abc.euw1.cache.amazonaws.com:6379",
    "RAYVISION_SERVE_HOST": "inference.example.com",
    "RAYVISION_CERT_ARN": "arn:aws:acm:eu-west-1:123456789012:certificate/0000-1111",
    "RAYVISION_WAF_ACL_ARN": (
        "arn:aws:wafv2:eu-west-1:123456789012:regional/webacl/rayvision-ingress/0a1b-2c3d"
    ),
}


@functools.cache
def _rendered_text(path: Path) -> str:
    env = {**os.environ, **EXAMPLE_VARS}
    out = subprocess.run(
        ["bash", "-c", 'source "$0" && render_manifest "$1"', SETUP / "lib.sh", path],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "${" not in out, f"{path.name}: placeholder left after rendering"
    return out


def render_manifest(path: Path) -> list[dict[str, Any]]:
    """Renders a manifest the way the setup scripts do (lib.sh render_manifest) and parses it."""
    return [doc for doc in yaml.safe_load_all(_rendered_text(path)) if doc]


def _close_objects(schema: Any) -> Any:
    """Makes every object schema reject unknown fields, as kubectl's strict field validation does.

    A CRD's openAPIV3Schema lists known fields without forbidding others (the API server prunes
    them silently), so a misspelt field would otherwise pass.
    """
    if isinstance(schema, list):
        return [_close_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _close_objects(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        closed["additionalProperties"] = False
    return closed


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    plural = f"{kind.lower()}s"
    crd = yaml.safe_load((CRDS / f"ray.io_{plural}.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(_close_objects(version["schema"]["openAPIV3Schema"]))


def crd_errors(doc: dict[str, Any]) -> list[str]:
    validator = crd_validator(doc["kind"])
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(copy.deepcopy(doc))
    ]


def iter_pod_specs(cluster_spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield cluster_spec["headGroupSpec"]["template"]["spec"]
    for group in cluster_spec.get("workerGroupSpecs", []):
        yield group["template"]["spec"]


def worker_group(cluster_spec: dict[str, Any], name: str) -> dict[str, Any]:
    (group,) = [g for g in cluster_spec["workerGroupSpecs"] if g["groupName"] == name]
    return group


def render_chart(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The MLflow chart rendered by Helm's own code (helm-python-sdk) for a first install: kind
    -> the object of that kind (the chart has one of each)."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name="mlflow", namespace="mlflow", is_install=True)
    objects: dict[str, dict[str, Any]] = {}
    for name, text in manifests.items():
        if name.endswith(".yaml"):
            for doc in yaml.safe_load_all(text):
                if doc:
                    assert doc["kind"] not in objects
                    objects[doc["kind"]] = doc
    return objects


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_hcl(path: Path) -> dict[str, Any]:
    """A Terraform file as plain Python values (strings unquoted, no block markers)."""
    options = hcl2.SerializationOptions(
        with_comments=False, explicit_blocks=False, strip_string_quotes=True
    )
    with path.open() as file:
        return hcl2.load(file, serialization_options=options)


@functools.cache
def terraform_blocks(kind: str) -> dict[str, Any]:
    """Every `kind` block (variable, output, ...) of the stack, by name; resource and data
    blocks by "TYPE.NAME". Parsed once per kind: read it, never mutate it."""
    blocks: dict[str, Any] = {}
    for path in sorted(TERRAFORM.glob("*.tf")):
        for entry in load_hcl(path).get(kind, []):
            for name, body in entry.items():
                if kind in ("resource", "data"):
                    blocks.update({f"{name}.{inner}": b for inner, b in body.items()})
                else:
                    blocks[name] = body
    return blocks


def kube_version() -> str:
    """The Kubernetes version the manifests must fit: the EKS version Terraform deploys."""
    return terraform_blocks("variable")["kubernetes_version"]["default"]
