"""Who holds what, read from the manifests as the setup scripts render them: the public serving
cluster holds none of the training cluster's credentials, and no Ray container holds the
Kubernetes API token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cluster.kuberay.serving_identity import (
    SERVING_MLFLOW_SECRET,
    SERVING_RAY_TOKEN_SECRET,
    SERVING_SERVICE_ACCOUNT,
    TRAINING_MLFLOW_SECRET,
    TRAINING_SERVICE_ACCOUNT,
    TUNE_STATE_KEY_SECRET,
)
from tests.cluster.clusterlib import KUBERAY, iter_pod_specs, render_manifest

TRAINING_RAY_TOKEN_SECRET = "rayvision-ray-token"  # noqa: S105  # a Secret's name
API_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"  # noqa: S105  # a folder
PROMOTER_MLFLOW_SECRET = "rayvision-mlflow-promoter"  # noqa: S105


def _serving_spec() -> dict[str, Any]:
    (service,) = render_manifest(KUBERAY / "rayservice.yaml")
    return service["spec"]["rayClusterConfig"]


def _cluster_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Ray cluster the manifests create: the RayCluster, the RayService's, the RayJobs'."""
    for path in [*sorted(KUBERAY.glob("*.yaml")), KUBERAY / "raycluster" / "raycluster.yaml"]:
        for doc in render_manifest(path):
            spec = doc.get("spec", {})
            if doc.get("kind") == "RayCronJob":
                spec = spec["jobTemplate"]
            cluster = spec.get("rayClusterConfig") or spec.get("rayClusterSpec")
            if doc.get("kind") == "RayCluster":
                cluster = spec
            if cluster:
                yield path.name, cluster


def _secret_refs(pod: dict[str, Any]) -> set[str]:
    names = set()
    for container in pod["containers"]:
        names |= {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}
        names |= {
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
    return names


def test_serving_cluster_runs_under_identities_of_its_own() -> None:
    spec = _serving_spec()
    assert spec["authOptions"] == {"mode": "token", "secretName": SERVING_RAY_TOKEN_SECRET}
    for pod in iter_pod_specs(spec):
        assert pod["serviceAccountName"] == SERVING_SERVICE_ACCOUNT
        assert _secret_refs(pod) == {SERVING_MLFLOW_SECRET}
    text = (KUBERAY / "rayservice.yaml").read_text()
    for training in (
        TRAINING_RAY_TOKEN_SECRET,
        TRAINING_MLFLOW_SECRET,
        TRAINING_SERVICE_ACCOUNT,
        TUNE_STATE_KEY_SECRET,
    ):
        assert training not in text


def test_training_clusters_keep_the_training_identities() -> None:
    for name, spec in _cluster_specs():
        if name == "rayservice.yaml":
            continue
        assert spec["authOptions"]["secretName"] == TRAINING_RAY_TOKEN_SECRET, name
        for pod in iter_pod_specs(spec):
            assert pod["serviceAccountName"] == TRAINING_SERVICE_ACCOUNT, name
            assert {TRAINING_MLFLOW_SECRET, TUNE_STATE_KEY_SECRET} <= _secret_refs(pod), name


@pytest.mark.parametrize("name_spec", list(_cluster_specs()), ids=lambda item: item[0])
def test_only_the_autoscaler_holds_the_kubernetes_api_token(
    name_spec: tuple[str, dict[str, Any]],
) -> None:
    _, spec = name_spec
    for pod in iter_pod_specs(spec):
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert API_TOKEN_PATH not in mounts
    (mount,) = spec["autoscalerOptions"]["volumeMounts"]
    assert (mount["mountPath"], mount["readOnly"]) == (API_TOKEN_PATH, True)
    head_volumes = {v["name"]: v for v in spec["headGroupSpec"]["template"]["spec"]["volumes"]}
    sources = head_volumes[mount["name"]]["projected"]["sources"]
    token = next(s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s)
    assert token["path"] == "token"
    assert {"ca.crt", "namespace"} <= {
        item["path"] for s in sources for item in next(iter(s.values())).get("items", [])
    }


@pytest.mark.parametrize("name_spec", list(_cluster_specs()), ids=lambda item: item[0])
def test_every_ray_container_has_an_ephemeral_storage_limit(
    name_spec: tuple[str, dict[str, Any]],
) -> None:
    _, spec = name_spec
    for pod in iter_pod_specs(spec):
        for container in pod["containers"]:
            resources = container["resources"]
            assert "ephemeral-storage" in resources["requests"], container["name"]
            assert "ephemeral-storage" in resources["limits"], container["name"]


def _secret_volumes(pod: dict[str, Any]) -> set[str]:
    return {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}


def test_only_job_drivers_hold_the_login_that_moves_champion() -> None:
    """The promotion step's MLflow user (MANAGE on the models) is a file in the long-lived
    cluster's driver pods, where evaluate-promote.sh runs; no Serve pod, head or worker holds
    it, nor the clusters the other RayJobs create."""
    seen = False
    for name, spec in _cluster_specs():
        groups = [("head", spec["headGroupSpec"])]
        groups += [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
        for group, entry in groups:
            pod = entry["template"]["spec"]
            holds = PROMOTER_MLFLOW_SECRET in _secret_volumes(pod) | _secret_refs(pod)
            assert holds == (group == "driver" and name == "raycluster.yaml"), (name, group)
            seen |= holds
    assert seen
    (promote,) = render_manifest(KUBERAY / "rayjob-evaluate-promote.yaml")
    assert promote["spec"]["clusterSelector"] == {"ray.io/cluster": "rayvision"}
    script = (KUBERAY / "evaluate-promote.sh").read_text()
    assert script.index("mlflow-promoter") < script.index("jobs/promote.py")
