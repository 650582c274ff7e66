"""The MLflow Helm chart, rendered and linted offline by Helm's own code (helm-python-sdk embeds
the Helm SDK), with several value sets; every rendered object is checked against Kubernetes'
schemas, and bad values must fail the chart's values.schema.json as they would at install."""

from __future__ import annotations

import configparser
import copy
import json
import re
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from cluster.mlflow import launcher
from tests.cluster.clusterlib import CHART, SETUP, kube_version, render_chart

# What 03-mlflow.sh passes (terraform outputs); the rest are the chart's defaults.
REQUIRED: dict[str, Any] = {
    "image": {"repository": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rayvision-mlflow"},
    "serviceAccount": {"roleArn": "arn:aws:iam::123456789012:role/rayvision-mlflow"},
    "artifactsDestination": "s3://rayvision-artifacts-123456789012/mlflow",
    "database": {
        "host": "rayvision.abcdefgh.eu-west-1.rds.amazonaws.com",
        "passwordSecretArn": (
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!db-0a1b-AbCdEf"
        ),
    },
    "ingress": {
        "host": "mlflow.example.com",
        "certificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/0000-1111-2222",
        "wafAclArn": (
            "arn:aws:wafv2:eu-west-1:123456789012:regional/webacl/rayvision-ingress/"
            "0a1b2c3d-4e5f-6789-abcd-ef0123456789"
        ),
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
            "ingress": {"inboundCidrs": ["203.0.113.0/24"], "scheme": "internet-facing"},
            "database": {"sslMode": "verify-full", "port": 5433},
        },
    ),
    "no-auth-no-ingress": _merge(
        REQUIRED, {"auth": {"enabled": False}, "ingress": {"enabled": False}}
    ),
}


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
    for doc in render_chart(values).values():
        kubernetes_validate.validate(doc, kube_version(), strict=True)


def test_hpa_keeps_two_to_five_servers() -> None:
    objects = render_chart(VALUE_SETS["defaults"])
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 5)
    assert hpa["scaleTargetRef"]["name"] == objects["Deployment"]["metadata"]["name"]
    assert "replicas" not in objects["Deployment"]["spec"], "the HPA owns the replica count"
    larger = render_chart(VALUE_SETS["larger"])["HorizontalPodAutoscaler"]["spec"]
    assert (larger["minReplicas"], larger["maxReplicas"]) == (3, 8)


def test_ingress_is_https_with_the_certificate_and_redirects_http() -> None:
    ingress = render_chart(VALUE_SETS["defaults"])["Ingress"]
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
    # Off the internet by default, on an ALB apart from the inference host's, rate-limited.
    assert annotations["alb.ingress.kubernetes.io/scheme"] == "internal"
    assert annotations["alb.ingress.kubernetes.io/group.name"] == "rayvision-mlflow"
    assert (
        annotations["alb.ingress.kubernetes.io/wafv2-acl-arn"] == REQUIRED["ingress"]["wafAclArn"]
    )
    assert ingress["spec"]["ingressClassName"] == "alb"
    assert ingress["spec"]["tls"] == [{"hosts": [REQUIRED["ingress"]["host"]]}]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == REQUIRED["ingress"]["host"]


def test_ingress_restricts_sources_when_asked() -> None:
    annotations = render_chart(VALUE_SETS["larger"])["Ingress"]["metadata"]["annotations"]
    assert annotations["alb.ingress.kubernetes.io/inbound-cidrs"] == "203.0.113.0/24"
    assert annotations["alb.ingress.kubernetes.io/scheme"] == "internet-facing"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"auth": {"enabled": False}}, "auth.enabled=false"),
        ({"ingress": {"scheme": "internet-facing"}}, "needs ingress.inboundCidrs"),
        (
            {"ingress": {"scheme": "internet-facing", "inboundCidrs": ["0.0.0.0/0"]}},
            "not an allow-list",
        ),
        (
            {
                "ingress": {
                    "scheme": "internet-facing",
                    "inboundCidrs": ["203.0.113.0/24"],
                    "wafAclArn": "",
                }
            },
            "needs ingress.wafAclArn",
        ),
    ],
)
def test_insecure_exposure_is_refused(override: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render_chart(_merge(REQUIRED, override))


def test_probes_check_health() -> None:
    container = _container(render_chart(VALUE_SETS["defaults"]))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}


def test_service_account_has_the_irsa_role() -> None:
    objects = render_chart(VALUE_SETS["defaults"])
    account = objects["ServiceAccount"]
    assert (
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        == (REQUIRED["serviceAccount"]["roleArn"])
    )
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_credentials_come_from_secrets_only() -> None:
    objects = render_chart(VALUE_SETS["defaults"])
    env = _env(objects)
    secret_refs = {
        name: e["valueFrom"]["secretKeyRef"] for name, e in env.items() if "valueFrom" in e
    }
    assert secret_refs == {
        "MLFLOW_AUTH_ADMIN_USERNAME": {"name": "mlflow-admin", "key": "admin-username"},
        "MLFLOW_AUTH_ADMIN_PASSWORD": {"name": "mlflow-admin", "key": "admin-password"},
        "MLFLOW_FLASK_SERVER_SECRET_KEY": {"name": "mlflow-admin", "key": "flask-secret-key"},
    }
    # The database URI carries no credentials; libpq takes the password from the file the
    # sidecar keeps from the RDS-managed secret (tests/integration/mlflow_server/
    # test_mlflow_image.py runs both for real).
    uri = env["MLFLOW_BACKEND_STORE_URI"]["value"]
    # verify-full against the RDS CA bundle the image carries at the default path.
    assert uri == (
        "postgresql+psycopg2://rayvision.abcdefgh.eu-west-1.rds.amazonaws.com:5432/mlflow"
        "?sslmode=verify-full&sslrootcert=/etc/ssl/certs/rds-global-bundle.pem"
    )
    dockerfile = (CHART.parents[1] / "docker" / "mlflow.Dockerfile").read_text()
    bundle = "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem"
    assert f"ADD --chmod=644 {bundle} \\\n    /etc/ssl/certs/rds-global-bundle.pem" in dockerfile
    assert "PGPASSWORD" not in env
    assert "Secret" not in objects, "the chart must not create secrets with values in them"
    ini = objects["ConfigMap"]["data"]["basic_auth.ini"]
    assert f"database_uri = {uri}" in ini
    assert "password" not in ini


def test_users_get_nothing_until_granted_and_the_login_carries_the_promotion_gate() -> None:
    objects = render_chart(VALUE_SETS["defaults"])
    ini = configparser.ConfigParser()
    ini.read_string(objects["ConfigMap"]["data"]["basic_auth.ini"])
    assert ini["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    login = ini["mlflow"]["authorization_function"]
    assert login == launcher.GUARDED_LOGIN
    module = login.split(":")[0].replace(".", "/") + ".py"
    dockerfile = (CHART.parents[1] / "docker" / "mlflow.Dockerfile").read_text()
    assert "WORKDIR /srv\nCOPY cluster/mlflow/pgpass.py" in dockerfile
    assert f"COPY {module} {module}\nENV PYTHONPATH=/srv\n" in dockerfile


def _pod(objects: dict[str, dict[str, Any]], kind: str) -> dict[str, Any]:
    pod: dict[str, Any] = objects[kind]["spec"]["template"]["spec"]
    return pod


def test_the_password_file_is_kept_by_a_sidecar_from_the_rds_secret() -> None:
    objects = render_chart(VALUE_SETS["defaults"])
    pod = _pod(objects, "Deployment")
    (sidecar,) = pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always", "a native sidecar, restarted if it dies"
    secret = REQUIRED["database"]["passwordSecretArn"]
    assert f"--secret-id={secret}" in sidecar["args"]
    password_file = _env(objects)["PGPASSFILE"]["value"]
    assert f"--file={password_file}" in sidecar["args"]
    assert password_file in sidecar["startupProbe"]["exec"]["command"]
    # The file is in memory and shared by the two containers only; the server cannot write it.
    (volume,) = [v for v in pod["volumes"] if v["name"] == "db-credentials"]
    assert volume["emptyDir"]["medium"] == "Memory"
    mounts = {c["name"]: c["volumeMounts"] for c in pod["containers"] + pod["initContainers"]}
    server_mount = next(m for m in mounts["mlflow"] if m["name"] == "db-credentials")
    assert server_mount.get("readOnly") is True
    assert password_file.startswith(server_mount["mountPath"] + "/")


def test_a_chart_upgrade_upgrades_the_database_schema_first() -> None:
    objects = render_chart(VALUE_SETS["defaults"])
    job = objects["Job"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-upgrade"
    pod = _pod(objects, "Job")
    (upgrade,) = pod["containers"]
    assert upgrade["command"] == ["mlflow", "db", "upgrade"]
    assert upgrade["args"] == [_env(objects)["MLFLOW_BACKEND_STORE_URI"]["value"]]
    assert upgrade["image"] == _container(objects)["image"], "the new version's image"
    (pgpass,) = pod["initContainers"]
    assert "--once" in pgpass["args"]
    assert pod["serviceAccountName"] == _pod(objects, "Deployment")["serviceAccountName"]


def test_auth_and_artifact_proxy_in_the_server_command() -> None:
    args = _container(render_chart(VALUE_SETS["defaults"]))["args"]
    assert "--app-name=basic-auth" in args
    assert "--serve-artifacts" in args
    assert f"--artifacts-destination={REQUIRED['artifactsDestination']}" in args
    objects = render_chart(VALUE_SETS["no-auth-no-ingress"])
    assert "--app-name=basic-auth" not in _container(objects)["args"]
    assert "Ingress" not in objects
    assert "ConfigMap" not in objects


def test_allowed_hosts_cover_ingress_and_cluster_names() -> None:
    hosts = _env(render_chart(VALUE_SETS["larger"]))["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(
        ","
    )
    assert "mlflow.example.com" in hosts
    assert "mlflow.internal.example.com" in hosts
    assert "mlflow.mlflow.svc.cluster.local:5000" in hosts


def test_pod_disruption_budget_keeps_one_server() -> None:
    objects = render_chart(VALUE_SETS["defaults"])
    pdb = objects["PodDisruptionBudget"]["spec"]
    assert pdb["minAvailable"] == 1
    pod_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()


def test_resources_and_hardening() -> None:
    objects = render_chart(VALUE_SETS["defaults"])
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
        render_chart(values)


def test_max_below_min_replicas_fails() -> None:
    values = _merge(REQUIRED, {"autoscaling": {"minReplicas": 4, "maxReplicas": 3}})
    with pytest.raises(helm.HelmRenderError, match="maxReplicas must be at least"):
        render_chart(values)


@pytest.mark.parametrize("missing", ["image", "serviceAccount", "database", "ingress"])
def test_missing_required_value_is_named(missing: str) -> None:
    values = {k: v for k, v in REQUIRED.items() if k != missing}
    with pytest.raises(helm.HelmRenderError, match=rf"{missing}\.\w+ is required"):
        render_chart(values)


def _flat_keys(values: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in values.items():
        if isinstance(value, dict):
            keys |= _flat_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def test_the_setup_script_sets_exactly_the_values_the_chart_requires() -> None:
    """03-mlflow.sh's `--set`s are REQUIRED's keys (and the image tag of the commit): a value
    the chart needs and the script does not pass (database.passwordSecretArn, say) fails the
    install."""
    script = (SETUP / "03-mlflow.sh").read_text()
    assert set(re.findall(r"--set ([\w.]+)=", script)) == _flat_keys(REQUIRED) | {
        "image.tag",
        "image.digest",
    }


def test_every_pod_runs_the_image_by_digest_when_given() -> None:
    digest = "sha256:" + "ab" * 32
    repository = REQUIRED["image"]["repository"]
    objects = render_chart(_merge(REQUIRED, {"image": {"digest": digest}}))
    pods = [_pod(objects, "Deployment"), _pod(objects, "Job")]
    images = {c["image"] for pod in pods for c in pod.get("initContainers", []) + pod["containers"]}
    assert images == {f"{repository}@{digest}"}
    tagged = {c["image"] for c in _pod(render_chart(REQUIRED), "Deployment")["containers"]}
    assert tagged == {f"{repository}:3.17.2"}
