"""`python -m app.cost.report` against a real MLflow server: runs carrying the cost contract of
issue #19 (a sweep parent with its trials, one stopped early, a plain run, an unpriced run, in
two months), the report read back as the command a user runs. Every expected figure is computed
here from the runs this test wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from app import tracking
from app.cost import report as cost_report
from tests.conftest import REPO, MlflowServer
from tests.support import free_port

pytestmark = [pytest.mark.integration]

JANUARY = datetime(2024, 1, 17, 23, 30, tzinfo=UTC)  # late in the day: months are UTC
FEBRUARY = datetime(2024, 2, 1, 0, 15, tzinfo=UTC)
COST_KEYS = ("cost_usd", "cpu_seconds", "gpu_seconds", "node_seconds", "cost_saved_usd")


@dataclass
class Logged:
    experiment: str
    model: str
    month: str
    metrics: dict[str, float]
    parent: bool = False
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Store:
    uri: str
    sweeps: str  # experiment with the sweep, a plain run and an unpriced run
    other: str  # experiment with one plain run of another model, the next month
    empty: str  # experiment without runs
    runs: list[Logged]

    def counted(self, **where: str) -> list[Logged]:
        """Runs a report counts (parents never), restricted to matching fields."""
        return [
            run
            for run in self.runs
            if not run.parent and all(getattr(run, key) == value for key, value in where.items())
        ]


def priced(runs: Sequence[Logged]) -> list[Logged]:
    return [run for run in runs if "cost_usd" in run.metrics]


def expected(runs: Sequence[Logged]) -> dict[str, Any]:
    """The figures a report shows for these runs, summed here from what was logged."""
    costed = priced(runs)
    stopped = [run for run in costed if "cost_saved_usd" in run.metrics]
    return {
        "runs": len(costed),
        "unpriced": len(runs) - len(costed),
        # unpriced is not free: no figure where nothing was priced
        "cost_usd": sum(run.metrics["cost_usd"] for run in costed) if costed else None,
        "cpu_hours": sum(run.metrics["cpu_seconds"] for run in costed) / 3600,
        "gpu_hours": sum(run.metrics["gpu_seconds"] for run in costed) / 3600,
        "node_hours": sum(run.metrics["node_seconds"] for run in costed) / 3600,
        "stopped_early": len(stopped),
        "saved_usd": sum(run.metrics["cost_saved_usd"] for run in stopped),
    }


def assert_figures(shown: dict[str, Any], runs: Sequence[Logged]) -> None:
    want = expected(runs)
    assert {key: shown[key] for key in want} == pytest.approx(want)


def cost_metrics(
    cost: float, cpu_s: float, gpu_s: float, saved: float | None = None
) -> dict[str, float]:
    metrics = {"cost_usd": cost, "cpu_seconds": cpu_s, "gpu_seconds": gpu_s, "node_seconds": cpu_s}
    if saved is not None:
        metrics["cost_saved_usd"] = saved
    return metrics


def log_run(
    client: MlflowClient, experiment_id: str, name: str, run: Logged, when: datetime, parent: str
) -> str:
    tags = {"model": run.model, "dataset": "digits", **run.tags}
    if "cost_usd" in run.metrics:
        tags["cost.price_table"] = "2024-01"
    if parent:
        tags["mlflow.parentRunId"] = parent
    start_ms = int(when.timestamp() * 1000)
    created = client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=name)
    run_id = created.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, 0) for key, value in run.metrics.items()]
    if metrics:
        client.log_batch(run_id, metrics=metrics)
    status = "KILLED" if "cost_saved_usd" in run.metrics else "FINISHED"
    client.set_terminated(run_id, status=status, end_time=start_ms + 60_000)
    return str(run_id)


@pytest.fixture(scope="module")
def store(mlflow_server: MlflowServer) -> Store:
    client = MlflowClient(mlflow_server.uri)
    suffix = uuid.uuid4().hex[:8]
    sweeps, other, empty = (f"cost-{suffix}-{kind}" for kind in ("sweeps", "other", "empty"))
    ids = {name: client.create_experiment(name) for name in (sweeps, other, empty)}
    trials = [
        Logged(sweeps, "resnet18", "2024-01", cost_metrics(0.125, 900, 0)),
        Logged(sweeps, "resnet18", "2024-01", cost_metrics(0.5, 1800, 450)),
        Logged(sweeps, "resnet18", "2024-01", cost_metrics(0.0625, 300, 0, saved=0.4375)),
    ]
    parent = Logged(
        sweeps,
        "resnet18",
        "2024-01",
        {
            "sweep_cost_usd": sum(t.metrics["cost_usd"] for t in trials),
            "best_trial_cost_usd": trials[1].metrics["cost_usd"],
            "asha_saved_usd": trials[2].metrics["cost_saved_usd"],
        },
        parent=True,
        tags={"sweep_parent": "true"},
    )
    parent_id = log_run(client, ids[sweeps], "sweep", parent, JANUARY, "")
    for number, trial in enumerate(trials):
        log_run(client, ids[sweeps], f"trial-{number}", trial, JANUARY, parent_id)
    plain = Logged(sweeps, "mobilenet_v3_small", "2024-02", cost_metrics(0.25, 3600, 3600))
    log_run(client, ids[sweeps], "train", plain, FEBRUARY, "")
    evaluation = Logged(sweeps, "resnet18", "2024-02", {"test_accuracy": 0.96})
    log_run(client, ids[sweeps], "evaluate", evaluation, FEBRUARY, "")
    elsewhere = Logged(other, "mobilenet_v3_large", "2024-02", cost_metrics(1.75, 7200, 0))
    log_run(client, ids[other], "train", elsewhere, FEBRUARY, "")
    return Store(
        mlflow_server.uri, sweeps, other, empty, [parent, *trials, plain, evaluation, elsewhere]
    )


def report(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    return subprocess.run(
        [sys.executable, "-m", "app.cost.report", *args],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def json_report(store: Store, *args: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    done = report(store.uri, "--json", *args)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines and lines[-1].get("total") is True, done.stdout
    assert all(line.get("row") is True for line in lines[:-1])
    return lines[:-1], lines[-1]


def both(store: Store) -> tuple[str, ...]:
    return ("--experiment", store.sweeps, "--experiment", store.other)


def test_the_total_counts_each_trial_and_plain_run_once(store: Store) -> None:
    rows, total = json_report(store, *both(store))
    assert_figures(total, store.counted())
    parent = next(run for run in store.runs if run.parent)
    with_parent = expected(store.counted())["cost_usd"] + parent.metrics["sweep_cost_usd"]
    assert total["cost_usd"] != pytest.approx(with_parent)
    assert total["sweeps"] == 1
    assert total["price_tables"] == ["2024-01"]
    assert sum(row["runs"] for row in rows) == total["runs"]
    assert sum(row["unpriced"] for row in rows) == total["unpriced"] == 1

    shown = report(store.uri, *both(store))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    total_line = next(line for line in lines if line.startswith("total"))
    assert f"{expected(store.counted())['cost_usd']:.4f}" in total_line.split()
    assert "price table: 2024-01" in lines
    table = lines[: lines.index(total_line) + 1]
    assert len({len(line) for line in table}) == 1, "columns are aligned"


def test_rows_split_by_experiment_model_and_month(store: Store) -> None:
    rows, _ = json_report(store, *both(store))
    keys = {(run.experiment, run.model, run.month) for run in store.counted()}
    assert {(row["experiment"], row["model"], row["month"]) for row in rows} == keys
    for row in rows:
        where = {"experiment": row["experiment"], "model": row["model"], "month": row["month"]}
        assert_figures(row, store.counted(**where))
    assert any(row["cost_usd"] is None for row in rows)  # the evaluation run's row


def test_grouping_by_month_and_by_model(store: Store) -> None:
    rows, _ = json_report(store, *both(store), "--by", "month")
    assert {row["month"] for row in rows} == {"2024-01", "2024-02"}
    assert all(set(row) & {"experiment", "model"} == set() for row in rows)
    for row in rows:
        assert_figures(row, store.counted(month=row["month"]))

    rows, _ = json_report(store, *both(store), "--by", "model")
    assert {row["model"] for row in rows} == {run.model for run in store.counted()}
    for row in rows:
        assert_figures(row, store.counted(model=row["model"]))


def test_since_leaves_out_earlier_months(store: Store) -> None:
    rows, total = json_report(store, *both(store), "--since", "2024-02")
    assert {row["month"] for row in rows} == {"2024-02"}
    assert_figures(total, store.counted(month="2024-02"))
    assert total["sweeps"] == 0

    later = report(store.uri, *both(store), "--since", "2024-03")
    assert later.returncode == 0, later.stderr
    assert later.stdout.startswith("no runs in "), later.stdout


def test_every_page_of_runs_is_read(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    monkeypatch.setattr(cost_report, "PAGE_SIZE", 2)  # 6 runs: three pages
    built = cost_report.build(tracking.client(), [store.sweeps], None, cost_report.DIMENSIONS)
    assert_figures(built.total.figures(), store.counted(experiment=store.sweeps))
    assert built.sweeps == 1


def test_an_experiment_without_runs_says_so(store: Store) -> None:
    done = report(store.uri, "--experiment", store.empty)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"no runs in {store.empty} (tracking: {store.uri})"


def test_an_unknown_experiment_exits_2_naming_the_known_ones(store: Store) -> None:
    missing = f"{store.sweeps}-missing"
    done = report(store.uri, "--experiment", store.sweeps, "--experiment", missing)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert missing in done.stderr
    assert all(name in done.stderr for name in (store.sweeps, store.other, store.empty))


def test_a_dead_tracking_server_is_one_line_and_exit_1() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    done = report(dead, "--since", "2024-01")
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: cannot reach the MLflow tracking server at {dead}")
