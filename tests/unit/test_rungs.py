"""ASHA's rungs across a restored sweep (``app.tune.rungs``): the keeper's state goes through
Tune's callback snapshot into the scheduler that a restored Tuner runs, and a resumed trial
replays the epochs its MLflow run holds."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mlflow.entities import Metric
from ray import tune
from ray.tune.callback import CallbackList
from ray.tune.schedulers import TrialScheduler

from app import tracking
from app.train.config import TrainConfig
from app.train.driver import RAY_RUN_NAME_TAG
from app.tune.rungs import RungKeeper, asha, recorded_epochs


def _trainable(config: dict[str, Any]) -> None:
    pass


def _report(scheduler: Any, trial_id: str, epoch: float, value: float) -> str:
    trial: Any = SimpleNamespace(trial_id=trial_id)
    scheduler.on_trial_add(None, trial)
    decision: str = scheduler.on_trial_result(None, trial, {"epoch": epoch, "val_accuracy": value})
    return decision


def test_rungs_come_back_into_the_scheduler_a_restored_tuner_runs(tmp_path: Path) -> None:
    scheduler = asha(epochs=4, grace_period=1, reduction_factor=2)
    scheduler.set_search_properties("val_accuracy", "max")
    tune.Tuner(
        _trainable,
        tune_config=tune.TuneConfig(scheduler=scheduler),
        run_config=tune.RunConfig(
            name="sweep", storage_path=str(tmp_path), callbacks=[RungKeeper(scheduler)]
        ),
    )
    assert _report(scheduler, "good", 1.0, 0.9) == TrialScheduler.CONTINUE
    CallbackList([RungKeeper(scheduler)]).save_to_dir(str(tmp_path))

    restored = tune.Tuner.restore(str(tmp_path / "sweep"), trainable=_trainable)
    # Tune's private handles, to check the premise: one pickle, so one scheduler object.
    tuner = restored._local_tuner
    assert tuner is not None
    keeper = tuner._run_config.callbacks[0]
    assert keeper.scheduler is tuner._tune_config.scheduler is not scheduler
    fresh = asha(epochs=4, grace_period=1, reduction_factor=2)
    fresh.set_search_properties("val_accuracy", "max")
    assert _report(fresh, "weak", 1.0, 0.1) == TrialScheduler.CONTINUE  # Tune alone: no rungs

    CallbackList([keeper]).restore_from_dir(str(tmp_path))
    assert _report(keeper.scheduler, "weak", 1.0, 0.1) == TrialScheduler.STOP
    assert _report(keeper.scheduler, "good", 2.0, 0.95) == TrialScheduler.CONTINUE


def test_recorded_epochs_are_each_epoch_once_in_order_without_the_last() -> None:
    cfg = TrainConfig(epochs=3, run_name="sweep-trial1", experiment="rungs")
    assert recorded_epochs(cfg, "val_accuracy") == []  # no experiment yet
    run_id = tracking.start_run("rungs", "sweep-trial1", {}, {RAY_RUN_NAME_TAG: "sweep-trial1"})
    assert recorded_epochs(cfg, "val_accuracy") == []
    points = [  # (key, value, step): batch metrics between, epoch 2 logged twice, then the last
        ("batch_loss", 2.0, 5),
        ("epoch", 1.0, 10),
        ("val_accuracy", 0.5, 10),
        ("epoch", 2.0, 20),
        ("val_accuracy", 0.7, 20),
        ("epoch", 2.0, 20),
        ("val_accuracy", 0.7, 20),
        ("epoch", 3.0, 30),
        ("val_accuracy", 0.8, 30),
    ]
    tracking.client().log_batch(run_id, [Metric(k, v, i, s) for i, (k, v, s) in enumerate(points)])
    assert recorded_epochs(cfg, "val_accuracy") == [
        {"epoch": 1.0, "val_accuracy": 0.5},
        {"epoch": 2.0, "val_accuracy": 0.7},
    ]
    other = cfg.model_copy(update={"run_name": "sweep-trial2"})
    assert recorded_epochs(other, "val_accuracy") == []
