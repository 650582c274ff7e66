"""Recording cost on MLflow runs: a training run's own figures when it ends, and a sweep's
totals on its parent run. Pricing never fails the run it prices: a figure that cannot be
computed is reported on the console and left out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app import tracking
from app.cost.usage import RunCost, run_cost

SAVED_METRIC = "cost_saved_usd"
EPOCHS_RUN_TAG = "cost.epochs_run"  # the epochs a saving was figured from


def record_run_cost(run_id: str, stopped_early: bool = False) -> RunCost | None:
    """Price the run from its holders over its lifetime so far and log the figures. A run
    ``stopped_early`` also gets what its unrun epochs would have cost at its own average cost
    per epoch so far (what the scheduler saved)."""
    try:
        run = tracking.client().get_run(run_id)
        cost = run_cost(run)
    except Exception as exc:  # the state API or the tracking server; the run's result stands
        print(f"could not price run {run_id}: {exc}", flush=True)
        return None
    metrics = cost.metrics()
    done = run.data.metrics.get("epoch")
    planned = float(run.data.params.get("epochs", 0))
    tags = cost.tags()
    if stopped_early and done and done < planned:
        metrics[SAVED_METRIC] = cost.cost_usd / done * (planned - done)
        tags[EPOCHS_RUN_TAG] = f"{done:g}"  # a stopped trial's workers may log one more epoch
    buffer = tracking.MetricBuffer(run_id)
    buffer.log(metrics, step=0, repeat=True)
    buffer.drain()
    tracking.set_tags(run_id, tags)
    return cost


def sweep_cost(trials: Sequence[Any], best_run_id: str | None) -> dict[str, float]:
    """A sweep's totals from its trials' runs: the sum of their costs and resource-seconds,
    the best trial's cost, and what early stopping saved."""

    def total(key: str) -> float:
        return sum(float(run.data.metrics.get(key, 0.0)) for run in trials)

    best = next((r for r in trials if r.info.run_id == best_run_id), None)
    return {
        "sweep_cost_usd": total("cost_usd"),
        "sweep_cpu_seconds": total("cpu_seconds"),
        "sweep_gpu_seconds": total("gpu_seconds"),
        "sweep_node_seconds": total("node_seconds"),
        "best_trial_cost_usd": float(best.data.metrics.get("cost_usd", 0.0)) if best else 0.0,
        "asha_saved_usd": total(SAVED_METRIC),
        "unpriced_trials": float(sum("cost_usd" not in run.data.metrics for run in trials)),
    }
