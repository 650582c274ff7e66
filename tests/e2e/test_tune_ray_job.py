"""jobs/tune.py submitted as a Ray Job: ASHA + HyperOpt over TorchTrainer on digits, one MLflow
child run per trial under one parent. (A sweep whose driver is killed and then resumed:
tests/integration/test_sweep_resume.py; one whose trial loses its node:
tests/cluster/test_autoscaling_pipelines.py.)"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import MlflowServer, RayCluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EPOCHS = 3
# Warm start: a point known to learn, then one that cannot in a single epoch (lr 1e-4), so
# ASHA's first rung has something to stop.
WARM_START = json.dumps([
    {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 32},
    {"lr": 1e-4, "momentum": 0.8, "weight_decay": 1e-5, "batch_size": 128},
])  # fmt: skip


def sweep_command(experiment: str, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "python", "jobs/tune.py", "--dataset", "digits", "--model", "resnet18",
        "--epochs", str(EPOCHS), "--experiment", experiment,
        "--storage-path", str(tmp_path / "ray_results"),
        "--results-json", str(tmp_path / "out.json"), *extra,
    ]  # fmt: skip


def child_runs(client: MlflowClient, experiment: str, parent_run_id: str) -> list[Any]:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'"
    )


def test_sweep_one_child_run_per_trial_best_tagged_and_registered(
    ray_cluster: RayCluster, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    experiment, model_name = "e2e-tune", f"tuned-{uuid.uuid4().hex[:6]}"
    job_id = f"tune-{uuid.uuid4().hex[:8]}"
    ray_cluster.submit(
        sweep_command(
            experiment, tmp_path, "--num-samples", "4", "--max-concurrent", "1",
            "--num-workers", "1",
            "--scheduler", "asha", "--grace-period", "1", "--search", "hyperopt",
            "--points-to-evaluate", WARM_START, "--register-as", model_name,
        ),
        job_id,
    )  # fmt: skip
    info = ray_cluster.jobs.wait(job_id, timeout=1200)
    logs = ray_cluster.jobs.logs(job_id)
    assert info["status"] == "SUCCEEDED", logs[-4000:]
    assert "* best trial" in logs  # the summary table

    results = json.loads((tmp_path / "out.json").read_text())
    client = MlflowClient(mlflow_server.uri)
    parent = client.get_run(results["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["scheduler"] == "asha"
    runs = child_runs(client, experiment, results["parent_run_id"])
    trial_ids = [r.data.tags["trial_id"] for r in runs]
    assert len(runs) == 4 and len(set(trial_ids)) == 4  # exactly one run per trial
    statuses = {r.info.status for r in runs}
    assert statuses <= {"FINISHED", "KILLED"}
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert killed, "ASHA should stop the lr=1e-4 trial at its first rung"
    for run in runs:
        epochs = len(client.get_metric_history(run.info.run_id, "val_accuracy"))
        if run.info.status == "KILLED":
            assert epochs < EPOCHS and run.data.tags["early_stopped"] == "True"
            # What ASHA saved: the unrun epochs at the trial's own cost per epoch.
            done = float(run.data.tags["cost.epochs_run"])
            cost = run.data.metrics["cost_usd"]
            saved = run.data.metrics["cost_saved_usd"]
            assert saved == pytest.approx(cost / done * (EPOCHS - done)) and saved > 0
        else:
            assert epochs == EPOCHS and "test_accuracy" in run.data.metrics
    assert results["trials_by_status"] == {
        s: sum(r.info.status == s for r in runs) for s in statuses
    }

    best = [r for r in runs if r.data.tags.get("best_trial") == "true"]
    assert len(best) == 1
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert best[0].data.metrics["val_accuracy"] == max(
        r.data.metrics["val_accuracy"] for r in finished
    )
    assert results["best_run_id"] == best[0].info.run_id
    assert parent.data.tags["best_run_id"] == best[0].info.run_id
    version = client.get_model_version_by_alias(model_name, "challenger")
    assert version.run_id == best[0].info.run_id
    assert results["registered_version"] == version.version
    assert results["test_accuracy"] == best[0].data.metrics["test_accuracy"]
    assert parent.data.metrics["sweep_cost_usd"] == pytest.approx(
        sum(r.data.metrics["cost_usd"] for r in runs)
    )
    assert parent.data.metrics["asha_saved_usd"] == pytest.approx(
        sum(r.data.metrics["cost_saved_usd"] for r in killed)
    )
