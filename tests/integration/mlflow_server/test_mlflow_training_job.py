"""jobs/train.py, unchanged, against the central server: only the client environment a user's
shell holds (URI, username, password) points it there; its model lands in the bucket."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RayCluster

from .conftest import REPO, Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_training_job_logs_its_model_into_the_bucket(
    stack: Stack, ray_cluster: RayCluster, tmp_path: Path
) -> None:
    results = tmp_path / "out.json"
    experiment = f"train-{tmp_path.name}"
    env = stack.script_env(
        **{
            **ray_cluster.env,  # token auth; its MLFLOW_TRACKING_URI is replaced just below
            **stack.client_env(*stack.admin),
            "RAY_ADDRESS": ray_cluster.address,
            # No S3 credentials anywhere: artifacts can only travel through the server.
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
            "AWS_CONFIG_FILE": str(tmp_path / "none"),
        }
    )
    command = [sys.executable, str(REPO / "jobs" / "train.py"), "--dataset", "digits"]
    command += ["--model", "resnet18", "--epochs", "1", "--num-workers", "1"]
    command += ["--experiment", experiment, "--storage-path", str(tmp_path / "ray_results")]
    command += ["--results-json", str(results)]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(results.read_text())
    assert summary["model_uri"] == f"runs:/{summary['run_id']}/model"

    with stack.as_admin() as client:
        run = client.get_run(summary["run_id"])
        assert client.get_experiment(run.info.experiment_id).name == experiment
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    # The model (MLmodel + weights) and the run's own artifacts are objects in the bucket.
    stored = stack.objects(f"{run.info.experiment_id}/")
    assert [key for key in stored if key.endswith("/MLmodel")]
    assert [key for key in stored if f"/{summary['run_id']}/artifacts/" in key]
    # ... and nothing was written next to the job.
    assert not [p.name for p in tmp_path.iterdir() if p.name in ("mlruns", "mlartifacts")]
