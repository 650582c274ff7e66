"""The RayCluster's policies on a real local Ray cluster with token auth on:

- GPU autoscaling: on the simulated RayCluster (tests/cluster/autoscaling.py), Ray's autoscaler
  scales the GPU group from its minimum to its maximum under GPU tasks and back after its idle
  timeout.
- Security: on the suite's local cluster (tests/conftest.py `ray_cluster`, token auth on), the
  job API, the dashboard API and `ray job submit` refuse callers without the cluster's token and
  accept the ones with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

from tests.cluster.autoscaling import (
    IDLE_TIMEOUT_S,
    RAYCLUSTER,
    alive_workers,
    simulated_raycluster,
)
from tests.cluster.clusterlib import worker_group
from tests.cluster.local_ray import RAY, LocalRayCluster
from tests.support import wait_for

if TYPE_CHECKING:
    from tests.conftest import RayCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GPU_GROUP = worker_group(RAYCLUSTER["spec"], "gpu")


@pytest.fixture
def autoscaling_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayCluster]:
    ray_cluster = simulated_raycluster(tmp_path_factory.mktemp("ray"))
    try:
        yield ray_cluster
    finally:
        ray_cluster.stop()


def _gpu_nodes(cluster: LocalRayCluster) -> int:
    return len(alive_workers(cluster, "GPU"))


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
