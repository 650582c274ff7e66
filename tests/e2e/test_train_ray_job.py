"""The README's path: `ray job submit --runtime-env runtime_env.yaml --working-dir .` against a
`ray start --head` cluster with token auth, then the run checked in MLflow; and a worker killed
mid-training, the run resuming from its checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, MlflowServer, RayCluster
from tests.mlflow_checks import check_model_classifies_digits, check_training_run
from tests.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_submitted_training_job_lands_in_mlflow(
    ray_cluster: RayCluster, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    job_id = f"train-{uuid.uuid4().hex[:8]}"
    results_path = tmp_path / "out.json"
    ray_cluster.submit(
        [
            "python",
            "jobs/train.py",
            "--dataset",
            "digits",
            "--model",
            "resnet18",
            "--epochs",
            "3",
            "--num-workers",
            "2",
            "--experiment",
            "e2e-train",
            "--storage-path",
            str(tmp_path / "ray_results"),
            "--results-json",
            str(results_path),
        ],
        job_id,
    )
    info = ray_cluster.jobs.wait(job_id, timeout=600)
    logs = ray_cluster.jobs.logs(job_id)
    assert info["status"] == "SUCCEEDED", logs[-3000:]
    assert "epoch 3/3" in logs and "img/s" in logs  # progress a person can follow

    results = json.loads(results_path.read_text())
    client = MlflowClient(mlflow_server.uri)
    check_training_run(client, results["run_id"], epochs=3, log_every=10)
    tags = client.get_run(results["run_id"]).data.tags
    assert tags["ray_job_id"]
    # The commit travelled in the uploaded working dir (runtime_env.yaml ships .git's metadata,
    # no objects): this checkout's HEAD, read in the job without a git repository.
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert tags["git_commit"] == tags["mlflow.source.git.commit"] == head
    assert tags["git_source"] == "git-metadata" and tags["git_dirty"] in {"true", "false"}
    mlflow.set_tracking_uri(mlflow_server.uri)
    check_model_classifies_digits(results["model_uri"], 0.85)


def _train_worker_pids(cluster: RayCluster) -> list[int]:
    """PIDs of live Ray Train worker actors, from the dashboard's state API."""
    import requests

    response = requests.get(
        f"{cluster.dashboard}/api/v0/actors",
        params={
            "filter_keys": "state",
            "filter_predicates": "=",
            "filter_values": "ALIVE",
            "detail": "1",
            "limit": "1000",
        },
        headers=cluster.jobs.headers,
        timeout=10,
    )
    response.raise_for_status()
    actors = response.json()["data"]["result"]["result"]
    return [a["pid"] for a in actors if a["class_name"] == "RayTrainWorker" and a.get("pid")]


def test_killed_worker_resumes_from_checkpoint(
    ray_cluster: RayCluster, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    job_id = f"fault-{uuid.uuid4().hex[:8]}"
    results_path = tmp_path / "out.json"
    epochs = 6
    ray_cluster.submit(
        [
            "python",
            "jobs/train.py",
            "--dataset",
            "digits",
            "--model",
            "resnet18",
            "--epochs",
            str(epochs),
            "--num-workers",
            "2",
            "--experiment",
            "e2e-fault",
            "--max-failures",
            "2",
            "--storage-path",
            str(tmp_path / "ray_results"),
            "--results-json",
            str(results_path),
        ],
        job_id,
    )
    # Wait for the second epoch's checkpoint, then kill one worker process outright.
    wait_for(lambda: "epoch 2/6" in ray_cluster.jobs.logs(job_id), 300, "epoch 2", interval=0.5)
    pids = wait_for(lambda: _train_worker_pids(ray_cluster), 30, "train worker pids")
    os.kill(pids[-1], signal.SIGKILL)

    info = ray_cluster.jobs.wait(job_id, timeout=600)
    logs = ray_cluster.jobs.logs(job_id)
    assert info["status"] == "SUCCEEDED", logs[-3000:]
    resumed = re.search(r"resumed from checkpoint after epoch (\d+)/", logs)
    assert resumed and int(resumed.group(1)) >= 1  # continued, not restarted from scratch
    results = json.loads(results_path.read_text())
    assert results["epochs"] == epochs
    # One MLflow run holds every epoch once (the epoch cut by the kill may appear twice).
    val = MlflowClient(mlflow_server.uri).get_metric_history(results["run_id"], "val_accuracy")
    assert len({m.step for m in val}) == epochs
    assert len(val) <= epochs + 1
