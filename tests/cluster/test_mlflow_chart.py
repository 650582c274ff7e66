"""The MLflow Helm chart, rendered and linted offline by Helm's own code (helm-python-sdk embeds
the Helm SDK), with several value sets; every rendered object is checked against Kubernetes'
schemas, and bad values must fail the chart's values.schema.json as they would at install."""

from __future__ import annotations

import copy
import json
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.cluster.clusterlib import CHART, kube_version

# What 03-mlflow.sh passes (terraform outputs); the rest are the chart's defaults.
REQUIRED: dict[str, Any] = {
    "image": {"repository": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rayvision-mlflow"},
    "serviceAccount": {"roleArn": "arn:aws:iam::123456789012:role/rayvision-mlflow"},
    "artifactsDestination": "s3://rayvision-artifacts-123456789012/mlflow",
    "database": {"host": "rayvision.abcdefgh.eu-west-1.rds.amazonaws.com"},
    "ingress": {
        "host": "mlflow.example.com",
        "certificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/0000-1111-2222",
    },
}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


VALUE_SETS = {
    "defaults": REQUIRED,
    "larger": _merge(
        REQUIRED,
        {
            "autoscaling": {"minReplicas": 3, "maxReplicas": 8},
            "server": {"workers": 4, "extraAllowedHosts": ["mlflow.internal.example.com"]},
            "ingress": {"inboundCidrs": ["203.0.113.0/24"], "scheme": "internal"},
            "database": {"sslMode": "verify-full", "port": 5433},
        },
    ),
    "no-auth-no-ingress": _merge(
        REQUIRED, {"auth": {"enabled": False}, "ingress": {"enabled": False}}
    ),
}


def render(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """kind -> the rendered object of that kind (the chart has one of each)."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name="mlflow", namespace="mlflow", is_install=True)
    objects = {}
    for name, text in manifests.items():
        if name.endswith(".yaml"):
            for doc in yaml.safe_load_all(text):
                if doc:
                    assert doc["kind"] not in objects
                    objects[doc["kind"]] = doc
    return objects


def _container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _env(objects: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in _container(objects)["env"]}


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_chart_lints_clean(values: dict[str, Any]) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{kube_version()}.0")
    assert report["errors"] == []
    # Severity 1 is "info" (e.g. "icon is recommended"); warnings and errors fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rendered_objects_are_valid_kubernetes(values: dict[str, Any]) -> None:
    for doc in render(values).values():
        kubernetes_validate.validate(doc, kube_version(), strict=True)


def test_hpa_keeps_two_to_five_servers() -> None:
    objects = render(VALUE_SETS["defaults"])
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 5)
    assert hpa["scaleTargetRef"]["name"] == objects["Deployment"]["metadata"]["name"]
    assert "replicas" not in objects["Deployment"]["spec"], "the HPA owns the replica count"
    larger = render(VALUE_SETS["larger"])["HorizontalPodAutoscaler"]["spec"]
    assert (larger["minReplicas"], larger["maxReplicas"]) == (3, 8)


def test_ingress_is_https_with_the_certificate_and_redirects_http() -> None:
    ingress = render(VALUE_SETS["defaults"])["Ingress"]
    annotations = ingress["metadata"]["annotations"]
    assert (
        annotations["alb.ingress.kubernetes.io/certificate-arn"]
        == (REQUIRED["ingress"]["certificateArn"])
    )
    assert json.loads(annotations["alb.ingress.kubernetes.io/listen-ports"]) == [
        {"HTTP": 80},
        {"HTTPS": 443},
    ]
    assert annotations["alb.ingress.kubernetes.io/ssl-redirect"] == "443"
    assert annotations["alb.ingress.kubernetes.io/ssl-policy"].startswith("ELBSecurityPolicy-TLS13")
    assert annotations["alb.ingress.kubernetes.io/group.name"] == "rayvision"
    assert ingress["spec"]["ingressClassName"] == "alb"
    assert ingress["spec"]["tls"] == [{"hosts": [REQUIRED["ingress"]["host"]]}]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == REQUIRED["ingress"]["host"]


def test_ingress_restricts_sources_when_asked() -> None:
    annotations = render(VALUE_SETS["larger"])["Ingress"]["metadata"]["annotations"]
    assert annotations["alb.ingress.kubernetes.io/inbound-cidrs"] == "203.0.113.0/24"
    assert annotations["alb.ingress.kubernetes.io/scheme"] == "internal"


def test_probes_check_health() -> None:
    container = _container(render(VALUE_SETS["defaults"]))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}


def test_service_account_has_the_irsa_role() -> None:
    objects = render(VALUE_SETS["defaults"])
    account = objects["ServiceAccount"]
    assert (
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        == (REQUIRED["serviceAccount"]["roleArn"])
    )
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_credentials_come_from_secrets_only() -> None:
    objects = render(VALUE_SETS["defaults"])
    env = _env(objects)
    secret_refs = {
        name: e["valueFrom"]["secretKeyRef"] for name, e in env.items() if "valueFrom" in e
    }
    assert secret_refs == {
        "PGUSER": {"name": "mlflow-db", "key": "username"},
        "PGPASSWORD": {"name": "mlflow-db", "key": "password"},
        "MLFLOW_AUTH_ADMIN_USERNAME": {"name": "mlflow-admin", "key": "admin-username"},
        "MLFLOW_AUTH_ADMIN_PASSWORD": {"name": "mlflow-admin", "key": "admin-password"},
        "MLFLOW_FLASK_SERVER_SECRET_KEY": {"name": "mlflow-admin", "key": "flask-secret-key"},
    }
    # The database URI carries no credentials; libpq takes them from PGUSER / PGPASSWORD.
    uri = env["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert uri == (
        "postgresql://rayvision.abcdefgh.eu-west-1.rds.amazonaws.com:5432/mlflow?sslmode=require"
    )
    assert "Secret" not in objects, "the chart must not create secrets with values in them"
    ini = objects["ConfigMap"]["data"]["basic_auth.ini"]
    assert f"database_uri = {uri}" in ini
    assert "password" not in ini


def test_auth_and_artifact_proxy_in_the_server_command() -> None:
    args = _container(render(VALUE_SETS["defaults"]))["args"]
    assert "--app-name=basic-auth" in args
    assert "--serve-artifacts" in args
    assert f"--artifacts-destination={REQUIRED['artifactsDestination']}" in args
    objects = render(VALUE_SETS["no-auth-no-ingress"])
    assert "--app-name=basic-auth" not in _container(objects)["args"]
    assert "Ingress" not in objects
    assert "ConfigMap" not in objects


def test_allowed_hosts_cover_ingress_and_cluster_names() -> None:
    hosts = _env(render(VALUE_SETS["larger"]))["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert "mlflow.example.com" in hosts
    assert "mlflow.internal.example.com" in hosts
    assert "mlflow.mlflow.svc.cluster.local:5000" in hosts


def test_pod_disruption_budget_keeps_one_server() -> None:
    objects = render(VALUE_SETS["defaults"])
    pdb = objects["PodDisruptionBudget"]["spec"]
    assert pdb["minAvailable"] == 1
    pod_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()


def test_resources_and_hardening() -> None:
    objects = render(VALUE_SETS["defaults"])
    container = _container(objects)
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"autoscaling": {"minReplicas": 1}}, "minReplicas"),
        ({"autoscaling": {"maxReplicas": 50}}, "maxReplicas"),
        ({"database": {"sslMode": "disable"}}, "sslMode"),
        ({"ingress": {"certificateArn": "my-certificate"}}, "certificateArn"),
        ({"serviceAccount": {"roleArn": "arn:aws:iam::1:user/me"}}, "roleArn"),
        ({"artifactsDestination": "/var/mlflow"}, "artifactsDestination"),
        ({"auth": {"defaultPermission": "ALL"}}, "defaultPermission"),
        ({"replicaCount": 3}, "replicaCount"),
    ],
)
def test_bad_values_fail_the_schema(override: dict[str, Any], message: str) -> None:
    values = _merge(REQUIRED, override)
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError, match=message):
        chart.validate_schema(chart.merge_values(values))
    with pytest.raises(helm.HelmValuesError, match=message):
        render(values)


def test_max_below_min_replicas_fails() -> None:
    values = _merge(REQUIRED, {"autoscaling": {"minReplicas": 4, "maxReplicas": 3}})
    with pytest.raises(helm.HelmRenderError, match="maxReplicas must be at least"):
        render(values)


@pytest.mark.parametrize("missing", ["image", "serviceAccount", "database", "ingress"])
def test_missing_required_value_is_named(missing: str) -> None:
    values = {k: v for k, v in REQUIRED.items() if k != missing}
    with pytest.raises(helm.HelmRenderError, match=rf"{missing}\.\w+ is required"):
        render(values)
