"""The RayCluster's policies on a real local Ray cluster with token auth on:

- GPU autoscaling: Ray's autoscaler (v2, as on KubeRay) with fake nodes sized and bounded like
  the worker groups of cluster/kuberay/raycluster/raycluster.yaml scales the GPU group from its
  minimum to its maximum under GPU tasks and back after its idle timeout.
- Security: on the suite's local cluster (tests/conftest.py `ray_cluster`, token auth on), the
  job API, the dashboard API and `ray job submit` refuse callers without the cluster's token and
  accept the ones with it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from tests.cluster.clusterlib import KUBERAY, load_yaml, worker_group
from tests.cluster.local_ray import RAY, LocalRayCluster
from tests.support import wait_for

if TYPE_CHECKING:
    from tests.conftest import RayCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAYCLUSTER = load_yaml(KUBERAY / "raycluster" / "raycluster.yaml")
GPU_GROUP = worker_group(RAYCLUSTER["spec"], "gpu")
IDLE_TIMEOUT_S = RAYCLUSTER["spec"]["autoscalerOptions"]["idleTimeoutSeconds"]
# The simulation runs the production idle timeout in seconds instead of minutes (180 s -> 3 s),
# so that the scale-down is observed within a test; everything else is the YAML's.
TIME_SCALE = 60
FAKE_HEAD_NODE_ID = "f" * 51 + "00000"  # the fake provider's fixed head id
FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"


def _node_type(group: dict[str, Any]) -> dict[str, Any]:
    """A worker group as an autoscaler node type: its pods' resources and its bounds."""
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    cpu = str(limits["cpu"])
    resources: dict[str, Any] = {
        # KubeRay advertises the CPU limit rounded up, and nvidia.com/gpu as GPU.
        "CPU": math.ceil(int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)),
        "object_store_memory": 100 * 1024**2,  # small: every fake node shares this machine
    }
    if "nvidia.com/gpu" in limits:
        resources["GPU"] = int(limits["nvidia.com/gpu"])
    return {
        "resources": resources,
        "node_config": {},
        "min_workers": group["minReplicas"],
        "max_workers": group["maxReplicas"],
    }


def _autoscaling_config(gcs_address: str) -> dict[str, Any]:
    spec = RAYCLUSTER["spec"]
    head_cpus = int(spec["headGroupSpec"]["rayStartParams"].get("num-cpus", 1))
    node_types = {group["groupName"]: _node_type(group) for group in spec["workerGroupSpecs"]}
    node_types["ray.head.default"] = {
        "resources": {"CPU": head_cpus},
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


@pytest.fixture
def autoscaling_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayCluster]:
    head_cpus = RAYCLUSTER["spec"]["headGroupSpec"]["rayStartParams"].get("num-cpus", "1")
    ray_cluster = LocalRayCluster(
        tmp_path_factory.mktemp("ray"),
        head_cpus=int(head_cpus),
        head_args=("--object-store-memory=100000000",),
        env={
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            # Autoscaler v2, as KubeRay runs it for autoscalerOptions.version v2.
            "RAY_enable_autoscaler_v2": "1",
            "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
            "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID,
        },
    )
    ray_cluster.autoscaling_config = _autoscaling_config(ray_cluster.gcs_address)
    ray_cluster.start()
    try:
        yield ray_cluster
    finally:
        ray_cluster.stop()


def _gpu_nodes(cluster: LocalRayCluster) -> int:
    answer = requests.get(
        f"{cluster.dashboard_url}/api/v0/nodes?limit=100",
        headers={"Authorization": f"Bearer {cluster.token}"},
        timeout=10,
    )
    answer.raise_for_status()
    nodes = answer.json()["data"]["result"]["result"]
    return sum(1 for n in nodes if n["state"] == "ALIVE" and n["resources_total"].get("GPU"))


DRIVER = """
import os, sys, time, uuid, ray
address, workdir, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
ray.init(address=address)

@ray.remote(num_gpus=1)
def hold_a_gpu():
    node = ray.get_runtime_context().get_node_id()
    open(os.path.join(workdir, f"running-{node}-{uuid.uuid4().hex}"), "w").close()
    while not os.path.exists(os.path.join(workdir, "release")):
        time.sleep(0.2)

ray.get([hold_a_gpu.remote() for _ in range(count)])
"""


def _running_tasks(workdir: Path) -> list[str]:
    """Node id of each GPU task that has started."""
    return [p.name.split("-")[1] for p in workdir.glob("running-*")]


def test_production_idle_timeout_is_the_simulated_one_scaled() -> None:
    assert IDLE_TIMEOUT_S == 180
    assert RAYCLUSTER["spec"]["autoscalerOptions"]["version"] == "v2"
    assert (GPU_GROUP["minReplicas"], GPU_GROUP["maxReplicas"]) == (0, 5)


def test_gpu_workers_scale_from_min_to_max_and_back(
    autoscaling_cluster: LocalRayCluster, tmp_path: Path
) -> None:
    cluster = autoscaling_cluster
    low, high = GPU_GROUP["minReplicas"], GPU_GROUP["maxReplicas"]
    assert _gpu_nodes(cluster) == low
    # One task more than the group can hold: the autoscaler must stop at maxReplicas.
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, cluster.gcs_address, str(tmp_path), str(high + 1)],
        env=cluster.client_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen: list[int] = []

        def one_task_per_gpu_node() -> bool:
            seen.append(_gpu_nodes(cluster))
            return len(set(_running_tasks(tmp_path))) >= high

        wait_for(one_task_per_gpu_node, 240, f"GPU tasks on {high} workers", interval=1)
        seen.append(_gpu_nodes(cluster))
        assert max(seen) == seen[-1] == high, f"GPU workers went above maxReplicas: {seen}"
        assert len(_running_tasks(tmp_path)) == high, "the extra task ran without a free GPU"
        (tmp_path / "release").write_text("done")
        _, err = driver.communicate(timeout=120)
    finally:
        driver.kill()
    assert driver.returncode == 0, err[-2000:]
    assert len(_running_tasks(tmp_path)) == high + 1
    wait_for(lambda: _gpu_nodes(cluster) == low, 120, f"GPU workers back to {low}", interval=1)


def _with_token(ray_cluster: RayCluster) -> dict[str, str]:
    return {"Authorization": f"Bearer {ray_cluster.env['RAY_AUTH_TOKEN']}"}


def _env_without_token(tmp_path: Path) -> dict[str, str]:
    """A client with no token anywhere: none in the environment, none in its HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "HOME": str(tmp_path)}


@pytest.mark.parametrize("path", ["/api/jobs/", "/api/v0/nodes", "/api/cluster_status"])
def test_dashboard_api_refuses_requests_without_the_token(
    ray_cluster: RayCluster, path: str
) -> None:
    url = f"{ray_cluster.dashboard}{path}"
    assert requests.get(url, timeout=10).status_code in (401, 403)
    wrong = requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert wrong.status_code in (401, 403)
    assert requests.get(url, headers=_with_token(ray_cluster), timeout=10).ok


def test_job_submission_refused_without_the_token(ray_cluster: RayCluster, tmp_path: Path) -> None:
    job = {"entrypoint": "echo refused"}
    answer = requests.post(f"{ray_cluster.dashboard}/api/jobs/", json=job, timeout=10)
    assert answer.status_code in (401, 403)
    cli = subprocess.run(
        [RAY, "job", "submit", "--address", ray_cluster.dashboard, "--", "echo", "refused"],
        env=_env_without_token(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert cli.returncode != 0
    assert "Authentication required" in cli.stdout + cli.stderr
    listed = requests.get(
        f"{ray_cluster.dashboard}/api/jobs/", headers=_with_token(ray_cluster), timeout=10
    )
    assert all(j["entrypoint"] != "echo refused" for j in listed.json())


def test_job_submission_accepted_with_the_token(ray_cluster: RayCluster, tmp_path: Path) -> None:
    cli = subprocess.run(
        [RAY, "job", "submit", "--address", ray_cluster.dashboard, "--", "echo", "accepted"],
        env={**_env_without_token(tmp_path), **ray_cluster.env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "accepted" in cli.stdout
    assert "succeeded" in cli.stdout
