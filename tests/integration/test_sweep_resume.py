"""An ASHA sweep whose driver is killed keeps its rungs: after ``--resume`` its stop decisions
are those of an uninterrupted sweep (its recorded metrics replayed through a fresh ASHA), and
no epoch of any trial is trained twice. Ray Tune alone restores the scheduler empty
(ray-project/ray#30838) and lets the weak trials run to the end. The state it resumes from is
the state it signed: a copy with a malicious ``tuner.pkl`` is refused before anything is loaded."""

from __future__ import annotations

import json
import os
import pickle
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from app.tune.state_signing import KEY_ENV
from tests.conftest import REPO, MlflowServer, RayCluster
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCHS = 2  # ASHA rungs at epochs 1 and 2 (grace period 1, reduction factor 2)
METRIC = "val_accuracy"
EXPERIMENT = "it-sweep-resume"
# One trial at a time: one that learns, then two that cannot in one epoch (the same config, so
# the same values). The driver dies once the second is stopped: the third is stopped only if
# the rung holds the first trial's value as well as the second's (alone, it ties the second).
POINTS = json.dumps([{"lr": 0.01}, {"lr": 1e-4}, {"lr": 1e-4}])


def sweep_command(tmp_path: Path, sweep: str, *extra: str) -> list[str]:
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: loguniform, low: 0.0001, high: 0.1}\n")
    return [
        sys.executable, "jobs/tune.py", "--dataset", "digits", "--epochs", str(EPOCHS),
        "--num-workers", "1", "--num-samples", "3", "--max-concurrent", "1",
        "--search", "random", "--seed", "7", "--space-file", str(space),
        "--points-to-evaluate", POINTS, "--scheduler", "asha", "--grace-period", "1",
        "--reduction-factor", "2", "--metric", METRIC, "--experiment", EXPERIMENT,
        "--run-name", sweep, "--storage-path", str(tmp_path / "ray_results"),
        "--results-json", str(tmp_path / "out.json"), *extra,
    ]  # fmt: skip


def finished_in_snapshot(sweep_dir: Path) -> list[str]:
    """The trials that the sweep's latest experiment snapshot in storage holds as finished, once
    the callbacks' snapshot (the rungs, where there are any) names them too: both files are
    copied to storage by the same sync."""
    states = sorted(sweep_dir.glob("experiment_state-*.json"))
    try:
        trials = [json.loads(t) for t, _ in json.loads(states[-1].read_text())["trial_data"]]
    except (IndexError, OSError, ValueError, KeyError):
        return []  # none yet, or caught mid-copy
    done = [str(t["trial_id"]) for t in trials if t["status"] == "TERMINATED"]
    callbacks = sorted(sweep_dir.glob("callback-states-*.pkl"))
    if callbacks and not all(t.encode() in callbacks[-1].read_bytes() for t in done):
        return []
    return done


class Marker:
    """A pickle that creates a file when it is loaded: what restoring it would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_tampered_copy_refused(tmp_path: Path, sweep: str, env: dict[str, str]) -> None:
    """A copy of the killed sweep's storage whose tuner.pkl is a malicious pickle: ``--resume``
    refuses it, names the file, loads nothing and changes nothing there."""
    copy = tmp_path / "ray_results" / f"{sweep}-tampered"
    shutil.copytree(tmp_path / "ray_results" / sweep, copy)
    marker = tmp_path / "unpickled"
    (copy / "tuner.pkl").write_bytes(pickle.dumps(Marker(marker)))
    before = files_under(copy)
    refused = subprocess.run(
        sweep_command(tmp_path, copy.name, "--resume"), cwd=REPO, env=env, capture_output=True,
        text=True, timeout=600, check=False,
    )  # fmt: skip
    assert refused.returncode != 0, refused.stdout[-4000:]
    assert "tuner.pkl does not match its signature" in refused.stderr, refused.stderr[-4000:]
    assert not marker.exists()
    assert files_under(copy) == before


def early_stopped(client: MlflowClient, sweep: str) -> bool:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return experiment is not None and bool(
        client.search_runs(
            [experiment.experiment_id],
            f"tags.sweep = '{sweep}' and attributes.status = 'KILLED'",
        )
    )


def epochs_of(client: MlflowClient, run_id: str) -> list[tuple[float, float]]:
    """(epoch, metric) as logged, in order."""
    values = {m.step: m.value for m in client.get_metric_history(run_id, METRIC)}
    history = sorted(client.get_metric_history(run_id, "epoch"), key=lambda m: m.step)
    return [(m.value, values[m.step]) for m in history]


def uninterrupted_stops(trials: list[tuple[str, list[tuple[float, float]]]]) -> dict[str, int]:
    """The epoch at which a fresh ASHA, fed each trial's epochs in the order the sweep ran
    them, stops each trial (``EPOCHS``: it ran to the end)."""
    asha = ASHAScheduler(
        time_attr="epoch", metric=METRIC, mode="max", max_t=EPOCHS, grace_period=1,
        reduction_factor=2,
    )  # fmt: skip
    stops = {}
    for trial_id, epochs in trials:
        trial: Any = SimpleNamespace(trial_id=trial_id)
        asha.on_trial_add(None, trial)
        for epoch, value in epochs:
            result = {"epoch": epoch, METRIC: value}
            if asha.on_trial_result(None, trial, result) == TrialScheduler.STOP:
                asha.on_trial_complete(None, trial, result)
                stops[trial_id] = int(epoch)
                break
    return stops


def test_resumed_sweep_stops_what_an_uninterrupted_one_stops_and_trains_nothing_twice(
    ray_cluster: RayCluster, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    sweep, log_path = "resume-rungs", tmp_path / "sweep.log"
    client = MlflowClient(mlflow_server.uri)
    env = {**os.environ, **ray_cluster.env, "RAY_ADDRESS": ray_cluster.address}
    env[KEY_ENV] = secrets.token_hex(32)  # the key both drivers sign and check the state with
    with log_path.open("w") as log:
        driver = subprocess.Popen(
            sweep_command(tmp_path, sweep), cwd=REPO, env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

        def killable() -> list[str]:
            assert driver.poll() is None, log_path.read_text()[-4000:]
            if not early_stopped(client, sweep):
                return []
            return finished_in_snapshot(tmp_path / "ray_results" / sweep)

        try:
            snapshot = wait_for(
                killable, 600, "a stopped trial and a snapshot with a finished one", interval=0.5
            )
        finally:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
        (parent_before,) = client.search_runs(
            [experiment_id], f"tags.sweep = '{sweep}' and tags.sweep_parent = 'true'"
        )
        assert_tampered_copy_refused(tmp_path, sweep, env)
        resumed = subprocess.run(
            sweep_command(tmp_path, sweep, "--resume"), cwd=REPO, env=env, stdout=log,
            stderr=subprocess.STDOUT, timeout=900, check=False,
        )  # fmt: skip
    assert resumed.returncode == 0, log_path.read_text()[-4000:]

    assert "resuming sweep" in log_path.read_text()
    parent = json.loads((tmp_path / "out.json").read_text())["parent_run_id"]
    assert parent == parent_before.info.run_id  # the same sweep, not a new one
    runs = sorted(
        client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'"),
        key=lambda r: r.info.start_time,
    )
    trials = [r.data.tags["trial_id"] for r in runs]
    assert len(runs) == 3 == len(set(trials)) and trials[0] in snapshot
    logged = [epochs_of(client, r.info.run_id) for r in runs]
    for epochs in logged:  # each epoch trained once
        assert [epoch for epoch, _ in epochs] == list(range(1, len(epochs) + 1))

    expected = uninterrupted_stops(list(zip(trials, logged, strict=True)))
    assert list(expected.values()) == [EPOCHS, 1, 1]  # the scenario the points are chosen for
    # The sweep's decisions: where the scheduler stopped a trial, else it trained every epoch.
    decided = {
        trial: int(run.data.tags.get("stopped_at_epoch", len(epochs)))
        for trial, run, epochs in zip(trials, runs, logged, strict=True)
    }
    assert decided == expected
    statuses = [run.info.status for run in runs]
    assert statuses == ["FINISHED", "KILLED", "KILLED"]
