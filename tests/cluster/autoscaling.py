"""The project's RayCluster simulated on this machine: a local head sized like
cluster/kuberay/raycluster/raycluster.yaml's head group, and Ray's autoscaler (v2, as KubeRay runs
it) with fake nodes sized and bounded like its worker groups. Each fake node is a real raylet on
this machine, so tasks, actors, Ray Train and Ray Tune run on it for real; only the "pods" are
processes.

Differences from KubeRay, on purpose: the idle timeout runs in seconds instead of minutes
(TIME_SCALE), and every fake node shares this machine's cores and a small object store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from cluster.kuberay.generate import autoscaler_node_types
from tests.cluster.clusterlib import KUBERAY, load_yaml
from tests.cluster.local_ray import LocalRayCluster

RAYCLUSTER = load_yaml(KUBERAY / "raycluster" / "raycluster.yaml")
IDLE_TIMEOUT_S = RAYCLUSTER["spec"]["autoscalerOptions"]["idleTimeoutSeconds"]
# The simulation runs the production idle timeout in seconds instead of minutes (180 s -> 3 s),
# so that the scale-down is observed within a test; everything else is the YAML's.
TIME_SCALE = 60
FAKE_HEAD_NODE_ID = "f" * 51 + "00000"  # the fake provider's fixed head id
FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"


def _node_types() -> dict[str, Any]:
    """The worker groups as autoscaler node types: their Ray resources as KubeRay advertises
    them (generate.py, which also tells a sweep what the cluster can add) and their bounds."""
    groups = {group["groupName"]: group for group in RAYCLUSTER["spec"]["workerGroupSpecs"]}
    return {
        name: {
            # object_store_memory small: every fake node shares this machine.
            "resources": {**node_type["resources"], "object_store_memory": 100 * 1024**2},
            "node_config": {},
            "min_workers": groups[name]["minReplicas"],
            "max_workers": node_type["max_workers"],
        }
        for name, node_type in autoscaler_node_types(RAYCLUSTER["spec"]).items()
    }


def head_cpus() -> int:
    return int(RAYCLUSTER["spec"]["headGroupSpec"]["rayStartParams"].get("num-cpus", 1))


def _autoscaling_config(gcs_address: str) -> dict[str, Any]:
    spec = RAYCLUSTER["spec"]
    node_types = _node_types()
    node_types["ray.head.default"] = {
        "resources": {"CPU": head_cpus()},
        "node_config": {},
        "max_workers": 0,
    }
    return {
        "cluster_name": "rayvision-simulated",
        "max_workers": sum(group["maxReplicas"] for group in spec["workerGroupSpecs"]),
        # Ray's fake multi-node provider (the one AutoscalingCluster uses), loaded as an external
        # provider: the 2.60 wheel lacks the defaults file that its "fake_multinode" type reads.
        "provider": {
            "type": "external",
            "module": FAKE_PROVIDER,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "launch_multiple": True,
            "head_node_id": FAKE_HEAD_NODE_ID,
            "gcs_address": gcs_address,
        },
        "available_node_types": node_types,
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_S / 60 / TIME_SCALE,
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def simulated_raycluster(
    root: Path, env: dict[str, str] | None = None, workdir: Path | None = None
) -> LocalRayCluster:
    """The RayCluster at rest, started: its head only; ``env`` reaches every node (as the
    pods' envFrom does on Kubernetes), ``workdir`` is every node's working directory (the
    image's WORKDIR, where its code is). Stop it with ``stop()``."""
    cluster = LocalRayCluster(
        root,
        cwd=workdir,
        head_cpus=head_cpus(),
        head_args=("--object-store-memory=100000000",),
        env={
            **(env or {}),
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            # Autoscaler v2, as KubeRay runs it for autoscalerOptions.version v2.
            "RAY_enable_autoscaler_v2": "1",
            "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
            "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID,
        },
    )
    # Names this cluster for every process in it: Ray Train's placement-group cleaner looks the
    # cluster up and gives up when other Ray instances run on the machine.
    cluster.extra_env["RAY_ADDRESS"] = cluster.gcs_address
    cluster.autoscaling_config = _autoscaling_config(cluster.gcs_address)
    cluster.start()
    return cluster


def state(cluster: LocalRayCluster, kind: str) -> list[dict[str, Any]]:
    """Ray's state API: the cluster's ``kind`` (nodes, actors, ...), in detail."""
    answer = requests.get(
        f"{cluster.dashboard_url}/api/v0/{kind}?limit=1000&detail=true",
        headers={"Authorization": f"Bearer {cluster.token}"},
        timeout=10,
    )
    answer.raise_for_status()
    found: list[dict[str, Any]] = answer.json()["data"]["result"]["result"]
    return found


def alive_workers(cluster: LocalRayCluster, resource: str | None = None) -> list[dict[str, Any]]:
    """The live worker nodes (not the head), or those of them that offer ``resource``."""
    return [
        n
        for n in state(cluster, "nodes")
        if n["state"] == "ALIVE"
        and not n["is_head_node"]
        and (resource is None or n["resources_total"].get(resource))
    ]
