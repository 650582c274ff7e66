"""Shared fixtures: the real services the integration and e2e tests run against.

- ``mlflow_server``: a real ``mlflow server`` process (SQLite store, proxied artifacts).
- ``ray_cluster``: a real local Ray head started with ``ray start --head --block`` on free
  ports with token authentication on, MLflow pointed at ``mlflow_server``.
Both are started once per session and stopped at the end; nothing touches a user's servers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from serve.throughput import HIGH_THROUGHPUT_ENV, front_haproxy_env, private_haproxy_env
from tests.cluster.local_ray import LocalRayCluster
from tests.support import JobsApi, free_port, http_ok, moto_s3, stop_process_group, wait_for

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _isolated_mlflow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may reach a user's MLflow server: default every test to its own SQLite store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class MlflowServer:
    uri: str
    root: Path


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_ok(f"{uri}/health"), 90, "the MLflow server's /health")
        yield MlflowServer(uri, root)
    finally:
        stop_process_group(process)
        log.close()


@dataclass
class RayCluster:
    address: str  # GCS address for ray.init
    dashboard: str  # http URL for job submission
    env: dict[str, str]  # what a client needs: token auth, MLflow URI
    temp_dir: Path
    haproxy_stats: str  # HAProxy's stats page, in front of Serve's HTTP port
    metrics: str  # the node's Prometheus endpoint (Ray's and the application's metrics)

    @property
    def jobs(self) -> JobsApi:
        return JobsApi(self.dashboard, self.env["RAY_AUTH_TOKEN"])

    def submit(self, entrypoint: list[str], submission_id: str, timeout: float = 120) -> None:
        """``ray job submit`` exactly as the README has it (runtime_env.yaml, working dir)."""
        subprocess.run(
            [
                str(BIN / "ray"),
                "job",
                "submit",
                "--address",
                self.dashboard,
                "--runtime-env",
                "runtime_env.yaml",
                "--working-dir",
                ".",
                "--submission-id",
                submission_id,
                "--no-wait",
                "--",
                *entrypoint,
            ],
            cwd=REPO,
            env={**os.environ, **self.env},
            check=True,
            timeout=timeout,
            capture_output=True,
        )


LOCAL_RATE_ENV = "RAYVISION_LOCAL_NODE_HOURLY_USD"
LOCAL_NODE_HOURLY_USD = 0.96  # what the test cluster's machine is priced at


@pytest.fixture(scope="session")
def ray_cluster(
    mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RayCluster]:
    haproxy_stats_port = free_port()
    # Logical CPUs: two 2-worker trainers (plus their controllers) fit at once.
    cluster = LocalRayCluster(tmp_path_factory.mktemp("ray"), head_cpus=4)
    cluster.extra_env = {
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "PYTHONPATH": str(REPO),
        # `python` in a job's entrypoint is the cluster's: this environment's interpreter.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_DEDUP_LOGS": "0",
        # The price of this machine's hours, which runs' costs are figured at (app.cost).
        LOCAL_RATE_ENV: str(LOCAL_NODE_HOURLY_USD),
        # Name this cluster for every process in it: Ray Train's placement-group cleaner
        # looks the cluster up and gives up when other Ray instances run on the machine.
        "RAY_ADDRESS": cluster.gcs_address,
        # The models the replicas keep for a start without the registry: the test's own.
        "RAYVISION_SERVING_CACHE": str(cluster.temp_dir / "served-models"),
        # Serve as the project's clusters run it (HAProxy behind the front wrapper), with
        # HAProxy's files and ports its own.
        **HIGH_THROUGHPUT_ENV,
        **front_haproxy_env(),
        **private_haproxy_env(str(cluster.temp_dir / "hp"), haproxy_stats_port, free_port()),
    }
    cluster.head_args = ("--min-worker-port=20000", "--max-worker-port=20999")
    cluster.start()
    try:
        client_env = {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": cluster.token,
            "MLFLOW_TRACKING_URI": mlflow_server.uri,
            LOCAL_RATE_ENV: str(LOCAL_NODE_HOURLY_USD),
        }
        yield RayCluster(
            cluster.gcs_address,
            cluster.dashboard_url,
            client_env,
            cluster.temp_dir,
            f"http://127.0.0.1:{haproxy_stats_port}/stats",
            cluster.metrics_url,
        )
    finally:
        cluster.stop()


@pytest.fixture
def ray_client_env(
    ray_cluster: RayCluster, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RayCluster]:
    """This test process as a client of the session cluster (in-process ``ray.init``)."""
    import ray
    from ray._raylet import AuthenticationTokenLoader, Config

    for key, value in ray_cluster.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    # Ray caches the auth mode and token per process at first use; an earlier test may have
    # used Ray without them. Re-read both, as Ray itself does when it enables token auth.
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    yield ray_cluster

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An S3-compatible endpoint (moto), and the settings an AWS client reads to reach it."""
    with moto_s3() as url:
        for name, value in {
            "AWS_ENDPOINT_URL_S3": url,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        yield url
