"""A tracking outage during a sweep, against a real MLflow server that is stopped and started
again: the sweep's driver (its parent run, closing its trials' runs) and its trials (their
child runs, from the first call to the last) wait for the server instead of failing."""

from __future__ import annotations

import secrets
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from mlflow.tracking import MlflowClient

from app import tracking
from app.tune.report import SWEEP_TAG, TRIAL_TAG
from app.tune.sweep import _mlflow_closer
from tests.conftest import REPO, RayCluster
from tests.integration.conftest import StoppableMlflowServer
from tests.support import JobsApi, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RETRY_MESSAGE = "trying again"  # what tracking.retrying prints while the server is away


def test_the_sweep_driver_closes_a_trials_run_after_an_outage(
    server: StoppableMlflowServer, capsys: pytest.CaptureFixture[str]
) -> None:
    tags = {SWEEP_TAG: "outage-sweep"}
    parent = tracking.start_run("sweep-outage", "parent", {}, {**tags, "sweep_parent": "true"})
    child = tracking.start_run("sweep-outage", "t1", {}, {**tags, TRIAL_TAG: "t1"}, parent)
    closer = _mlflow_closer("sweep-outage", parent)
    errors: list[BaseException] = []

    def complete_the_trial() -> None:
        try:
            with tracking.outlasting_outages(300):
                closer.on_trial_complete(0, [], SimpleNamespace(trial_id="t1", last_result={}))
        except BaseException as exc:
            errors.append(exc)

    server.stop()
    thread = threading.Thread(target=complete_the_trial)
    thread.start()
    printed: list[str] = []

    def waiting() -> bool:
        printed.append(capsys.readouterr().out)
        return RETRY_MESSAGE in "".join(printed) or not thread.is_alive()

    wait_for(waiting, 120, "the closer to meet the outage")
    server.start()
    thread.join(300)
    assert not errors, errors
    run = MlflowClient(server.uri).get_run(child)
    assert run.info.status == "KILLED"  # stopped before its test metrics: an early stop
    assert run.data.tags["trial_status"] == "KILLED"


def test_a_sweep_outlasts_an_outage_between_its_trials(
    ray_cluster: RayCluster, server: StoppableMlflowServer, tmp_path: Path
) -> None:
    experiment = f"sweep-outage-{secrets.token_hex(3)}"
    trials, epochs = 2, 2
    job = {
        "entrypoint": (
            f"python {REPO}/jobs/tune.py --dataset digits --model resnet18 --epochs {epochs} "
            f"--num-workers 1 --num-samples {trials} --max-concurrent 1 --search random "
            f"--scheduler none --experiment {experiment} --register-as {experiment} "
            f"--storage-path {tmp_path / 'ray_results'}"
        ),
        "runtime_env": {
            "env_vars": {
                "MLFLOW_TRACKING_URI": server.uri,
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
            }
        },
        "submission_id": experiment,
    }
    jobs = ray_cluster.jobs
    requests.post(jobs.base, json=job, headers=jobs.headers, timeout=30).raise_for_status()
    client = MlflowClient(server.uri)

    def first_trial_finished() -> bool:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return False
        runs = client.search_runs([found.experiment_id], f"tags.{TRIAL_TAG} != ''")
        return any(r.info.status == "FINISHED" for r in runs)

    # Away from the end of the first trial (its child run closed) until the sweep has waited
    # on it: the driver closing that trial, the second trial opening its run.
    wait_for(first_trial_finished, 600, "the first trial to finish", interval=0.2)
    server.stop()
    wait_for(lambda: RETRY_MESSAGE in jobs.logs(experiment), 300, "the sweep to meet the outage")
    server.start()

    info = JobsApi.wait(jobs, experiment, 900)
    assert info["status"] == "SUCCEEDED", jobs.logs(experiment)[-4000:]
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    runs = client.search_runs([found.experiment_id])
    parent = [r for r in runs if r.data.tags.get("sweep_parent") == "true"]
    children = [r for r in runs if TRIAL_TAG in r.data.tags]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert [r.info.status for r in children] == ["FINISHED"] * trials
    for run in children:
        epochs_logged = [m.value for m in client.get_metric_history(run.info.run_id, "epoch")]
        assert sorted(epochs_logged) == [float(e) for e in range(1, epochs + 1)]
    registered = client.search_model_versions(f"name = '{experiment}'")
    assert len(registered) == 1, "the best trial's model is registered once"
