"""What a sweep records and reports: tags, the trial table, the best trial and its model."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from app import model_registry, tracking
from app.cost.record import sweep_cost
from app.tune.config import TuneConfig
from app.tune.space import SearchSpace

SWEEP_TAG = "sweep"
TRIAL_TAG = "trial_id"
BEST_TAG = "best_trial"


def _child_runs(experiment_id: str, parent_run_id: str) -> list[Any]:
    return tracking.client().search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        max_results=10_000,
    )


def summarise(
    cfg: TuneConfig, sweep: str, parent_run_id: str, space: SearchSpace
) -> dict[str, Any]:
    """Tag the best trial, log the best config to the parent, register the best model, print
    a table of trials."""
    experiment_id = tracking.ensure_experiment(cfg.experiment)
    runs = _child_runs(experiment_id, parent_run_id)
    statuses = Counter(run.info.status for run in runs)
    finished = [r for r in runs if r.info.status == "FINISHED" and cfg.metric in r.data.metrics]
    sign = 1 if cfg.mode == "max" else -1
    best = max(finished, key=lambda r: sign * r.data.metrics[cfg.metric], default=None)
    print_trial_table(runs, space, cfg.metric, best.info.run_id if best else None)
    cost = sweep_cost(runs, best.info.run_id if best else None)
    _log_sweep_cost(parent_run_id, cost)
    summary: dict[str, Any] = {
        "sweep": sweep,
        "parent_run_id": parent_run_id,
        "trials": len(runs),
        "trials_by_status": dict(statuses),
        "best_run_id": None,
        "best_config": None,
        "best_val_accuracy": None,
        "test_accuracy": None,
        "registered_version": None,
        "cost": cost,
    }
    if best is None:
        print("no trial finished: nothing to register", flush=True)
        return summary
    best_config = {name: best.data.params[name] for name in space.dimensions}
    tracking.set_tags(best.info.run_id, {BEST_TAG: "true"})
    tracking.set_tags(
        parent_run_id, {"best_run_id": best.info.run_id, "best_config": json.dumps(best_config)}
    )
    buffer = tracking.MetricBuffer(parent_run_id)
    buffer.log(
        {
            f"best_{cfg.metric}": best.data.metrics[cfg.metric],
            "best_test_accuracy": best.data.metrics.get("test_accuracy", float("nan")),
        },
        step=0,
    )
    buffer.drain()
    summary.update(
        best_run_id=best.info.run_id,
        best_config=best_config,
        best_val_accuracy=best.data.metrics.get("val_accuracy"),
        test_accuracy=best.data.metrics.get("test_accuracy"),
    )
    if cfg.register_as:
        tags = {"dataset": cfg.dataset, "run_id": best.info.run_id, "sweep": sweep}
        summary["registered_version"], _ = model_registry.register_once(
            best.info.run_id, cfg.register_as, tags, cfg.alias
        )
    return summary


def _log_sweep_cost(parent_run_id: str, cost: dict[str, float]) -> None:
    buffer = tracking.MetricBuffer(parent_run_id)
    buffer.log(cost, step=0, repeat=True)
    buffer.drain()
    print(
        f"sweep cost ${cost['sweep_cost_usd']:.4f} "
        f"({cost['sweep_node_seconds'] / 3600:.3f} node-h); best trial "
        f"${cost['best_trial_cost_usd']:.4f}; early stopping saved about "
        f"${cost['asha_saved_usd']:.4f}"
        + (f"; {cost['unpriced_trials']:.0f} trial(s) unpriced" if cost["unpriced_trials"] else ""),
        flush=True,
    )


def print_trial_table(runs: list[Any], space: SearchSpace, metric: str, best: str | None) -> None:
    columns = ["trial", "status", *space.dimensions, "epochs", metric, "test_accuracy"]
    rows = []
    for run in sorted(runs, key=lambda r: r.data.tags.get(TRIAL_TAG, "")):
        epochs = run.data.metrics.get("epoch")
        rows.append(
            [
                run.data.tags.get(TRIAL_TAG, "?") + (" *" if run.info.run_id == best else ""),
                run.info.status,
                *(_short(run.data.params.get(name, "")) for name in space.dimensions),
                "" if epochs is None else f"{epochs:.0f}",
                _short(run.data.metrics.get(metric, "")),
                _short(run.data.metrics.get("test_accuracy", "")),
            ]
        )
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
    for line in [columns, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)), flush=True)
    print("* best trial", flush=True)


def _short(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.4g}"
