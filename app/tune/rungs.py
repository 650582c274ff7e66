"""ASHA's rungs across a sweep's driver restart: Ray Tune rebuilds the scheduler empty on
restore (ray-project/ray#30838), so a resumed sweep would let through trials that the rungs
recorded before the restart stop. Two parts put them back:

- ``RungKeeper``, a Tune callback whose state is the scheduler's own checkpoint. Tune saves
  callbacks' state in every experiment snapshot, next to the trial states, and restores it
  before it re-queues the trials: the rungs come back from the same moment as the trials.
- ``replay_recorded_epochs``: snapshots are periodic, so a trial can be resumed from a snapshot
  older than its last epochs. Before it trains, it reports again the epochs its MLflow run
  holds; the scheduler decides on them as it did before (a rung holds one value per trial, so
  epochs already in the snapshot change nothing), and a trial it had stopped is stopped again
  before training anything.

Scheduler time is the epoch a result reports (``app.train.loop``: 1-based, counted across
resumes), not Tune's ``training_iteration``, which starts again at 1 in a resumed trial.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler

from app import tracking
from app.train.config import TrainConfig
from app.train.driver import RAY_RUN_NAME_TAG
from app.tune.state_signing import seal, unseal

TIME_ATTR = "epoch"


def asha(epochs: int, grace_period: int, reduction_factor: float) -> ASHAScheduler:
    """ASHA in epochs: rungs at ``grace_period * reduction_factor**k``, trials end at
    ``epochs``."""
    return ASHAScheduler(
        time_attr=TIME_ATTR,
        max_t=epochs,
        grace_period=min(grace_period, epochs),
        reduction_factor=reduction_factor,
    )


class RungKeeper(Callback):
    """Carries ``scheduler``'s state in Tune's experiment snapshot. Tune pickles the sweep's
    scheduler and callbacks together (tuner.pkl), so a restored keeper holds the restored
    scheduler that Tune runs. The state is sealed (``app.tune.state_signing``): the pickled
    scheduler is loaded only if a sweep wrote it."""

    def __init__(self, scheduler: ASHAScheduler) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder, "scheduler.pkl")
            self.scheduler.save(str(path))
            return seal({"scheduler": path.read_bytes()})

    def set_state(self, state: dict[str, Any]) -> None:
        scheduler = unseal(state)["scheduler"]
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder, "scheduler.pkl")
            path.write_bytes(scheduler)
            self.scheduler.restore(str(path))


def recorded_epochs(cfg: TrainConfig, metric: str) -> list[dict[str, float]]:
    """``{epoch, metric}`` of every epoch before the last that the MLflow run of
    ``cfg.run_name`` (the run ``fit`` resumes) logged, in order, each epoch once. The last
    epoch is left to ``fit``: it reports it with the test metrics, or has already finished."""
    experiment = tracking.client().get_experiment_by_name(cfg.experiment)
    if experiment is None:
        return []
    runs = tracking.client().search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.{RAY_RUN_NAME_TAG} = '{cfg.run_name}'",
        max_results=1,
    )
    if not runs:
        return []
    run_id = runs[0].info.run_id
    # Epoch metrics share the step (the global optimizer step) they were logged at.
    values = {m.step: m.value for m in tracking.client().get_metric_history(run_id, metric)}
    results: dict[float, dict[str, float]] = {}
    history = tracking.client().get_metric_history(run_id, TIME_ATTR)
    for point in sorted(history, key=lambda m: m.step):
        if point.step in values and point.value < cfg.epochs:
            results.setdefault(point.value, {TIME_ATTR: point.value, metric: values[point.step]})
    return [results[epoch] for epoch in sorted(results)]


def replay_recorded_epochs(cfg: TrainConfig, metric: str) -> None:
    """In a trial, before it trains: report the epochs it already trained (see the module's
    docstring). Each report waits for the scheduler's decision; a stop ends the trial here."""
    from ray import tune

    with tracking.outlasting_outages():  # as fit's calls do: a trial waits for its server
        results = recorded_epochs(cfg, metric)
    for result in results:
        tune.report(result)
