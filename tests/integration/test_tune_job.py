"""jobs/tune.py's entry point in this process on the session cluster: a grid sweep of two
trials, each a real TorchTrainer, logged under one parent run and the best registered; and what
a sweep's driver releases at its end."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from app.ray_runtime import ensure_ray, release_own_placement_groups
from tests.conftest import REPO, MlflowServer, RayCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_grid_sweep_in_process(
    ray_client_env: RayCluster,
    mlflow_server: MlflowServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    space = tmp_path / "space.yaml"
    space.write_text("batch_size: {type: choice, values: [64, 128]}\n")
    out = tmp_path / "out.json"
    monkeypatch.setattr(sys, "argv", [
        "jobs/tune.py", "--dataset", "digits", "--epochs", "2", "--num-samples", "1",
        "--search", "grid", "--scheduler", "none", "--space-file", str(space),
        "--experiment", "it-tune", "--register-as", "it-tuned", "--alias", "candidate",
        "--storage-path", str(tmp_path / "ray_results"), "--results-json", str(out),
    ])  # fmt: skip
    runpy.run_path(str(REPO / "jobs" / "tune.py"), run_name="__main__")

    results = json.loads(out.read_text())
    assert results["trials"] == 2 and results["trials_by_status"] == {"FINISHED": 2}
    client = MlflowClient(mlflow_server.uri)
    parent = client.get_run(results["parent_run_id"])
    assert json.loads(parent.data.params["search_space"]) == {
        "batch_size": {"type": "choice", "values": [64, 128]}
    }
    # Progress as the sweep went: on the console and on the parent run.
    assert "sweep: 2/2 trials done (0 stopped early, 0 failed)" in capsys.readouterr().out
    assert parent.data.metrics["sweep_trials_done"] == 2
    assert parent.data.metrics["sweep_trials_failed"] == 0
    assert 0 < parent.data.metrics["sweep_best_val_accuracy"] <= 1
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert sorted(r.data.params["batch_size"] for r in children) == ["128", "64"]
    # The sweep's cost is its trials' (each priced with its trial function's share too).
    assert all("cost.held.trial" in r.data.tags for r in children)
    trial_costs = [r.data.metrics["cost_usd"] for r in children]
    assert all(cost > 0 for cost in trial_costs)
    assert parent.data.metrics["sweep_cost_usd"] == pytest.approx(sum(trial_costs))
    assert results["cost"]["sweep_cost_usd"] == pytest.approx(sum(trial_costs))
    best_cost = next(r for r in children if r.info.run_id == results["best_run_id"])
    assert results["cost"]["best_trial_cost_usd"] == best_cost.data.metrics["cost_usd"]
    assert parent.data.metrics["asha_saved_usd"] == 0  # no scheduler: nothing stopped early
    assert results["best_config"]["batch_size"] in ("64", "128")
    version = client.get_model_version_by_alias("it-tuned", "candidate")
    assert version.run_id == results["best_run_id"] == parent.data.tags["best_run_id"]


def test_the_driver_releases_the_placement_groups_its_job_left(ray_client_env: RayCluster) -> None:
    """What a Train controller lost with its node leaves (its worker group's reservation) is
    released by the sweep's driver; its own job's only."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table

    ensure_ray()
    left = placement_group([{"CPU": 0.01}])
    ray.get(left.ready(), timeout=60)
    assert release_own_placement_groups() == [left.id.hex()]
    assert placement_group_table(left)["state"] == "REMOVED"
    assert release_own_placement_groups() == []
