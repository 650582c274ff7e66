"""A long sweep's progress: the counts Tune's trials give (including a trial Tune has called
back about but not yet stopped), the best result so far, the estimate of the time left, the
console line's pace, and the figures on the parent MLflow run."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

from mlflow.tracking import MlflowClient

from app import tracking
from app.tune.progress import SweepProgressReporter, count


def trial(
    trial_id: str, status: str, epoch: int | None = None, acc: float | None = None
) -> SimpleNamespace:
    result = {} if epoch is None else {"epoch": epoch, "val_accuracy": acc}
    return SimpleNamespace(trial_id=trial_id, status=status, last_result=result)


def test_counts_by_status_and_how_each_trial_ended() -> None:
    trials = [
        trial("a", "TERMINATED", 6, 0.9),  # all 6 epochs
        trial("b", "TERMINATED", 2, 0.5),  # stopped by ASHA at a rung
        trial("c", "ERROR", 1, 0.1),
        trial("d", "RUNNING", 3, 0.7),
        trial("e", "RUNNING", 4, 0.8),  # its completion was called back, the actor not stopped
        trial("f", "PENDING"),
    ]
    progress = count(trials, total=10, epochs=6, elapsed_s=600.0, ended={"e": "TERMINATED"})
    assert (progress.done, progress.stopped_early, progress.failed) == (4, 2, 1)
    assert (progress.running, progress.waiting) == (1, 5)  # f and the 4 not yet created
    assert progress.eta_s == 900.0  # 4 ended in 600 s: 6 more at that rate
    assert count(trials[:0], 10, 6, 5.0).eta_s is None  # nothing ended: no estimate
    assert count(trials, total=3, epochs=6, elapsed_s=1.0).total == 6  # a grid: all it made


def test_the_line_comes_on_each_ending_and_otherwise_at_most_every_interval() -> None:
    now = [1000.0]
    lines: list[str] = []
    run_id = tracking.start_run("sweeps", "progress", {}, {})
    reporter = SweepProgressReporter(
        4, 6, "val_accuracy", "max", run_id, every_s=30.0, clock=lambda: now[0], out=lines.append
    )
    running = [trial("a", "RUNNING", 1, 0.4), trial("b", "RUNNING", 1, 0.6)]
    reporter.on_trial_result(0, running, running[0], {"val_accuracy": 0.4, "epoch": 1})
    assert len(lines) == 1  # the first result reports at once
    now[0] += 10
    reporter.on_trial_result(0, running, running[1], {"val_accuracy": 0.6, "epoch": 1})
    assert len(lines) == 1  # 10 s later: not yet
    now[0] += 50
    running[1].last_result = {"epoch": 2, "val_accuracy": 0.55}
    reporter.on_trial_complete(0, running, running[1])  # ASHA stopped b at epoch 2
    assert len(lines) == 2
    assert lines[-1] == (
        "sweep: 1/4 trials done (1 stopped early, 0 failed), 1 running, 2 waiting; "
        "best val_accuracy 0.6000 (trial b); 1m00s elapsed, about 3m00s left"
    )
    history = MlflowClient(tracking.tracking_uri()).get_metric_history(run_id, "sweep_trials_done")
    assert [(m.value, m.step) for m in history] == [(0.0, 0), (1.0, 60)]
    best = MlflowClient(tracking.tracking_uri()).get_metric_history(
        run_id, "sweep_best_val_accuracy"
    )
    assert best[-1].value == 0.6


def test_min_mode_and_a_resumed_sweeps_finished_trials_count_for_the_best() -> None:
    lines: list[str] = []
    run_id = tracking.start_run("sweeps", "progress-min", {}, {})
    reporter = SweepProgressReporter(2, 3, "val_loss", "min", run_id, out=lines.append)
    finished = SimpleNamespace(trial_id="old", status="TERMINATED", last_result={"val_loss": 0.2})
    failed = SimpleNamespace(trial_id="new", status="RUNNING", last_result={"val_loss": 0.9})
    reporter.on_trial_error(0, [finished, failed], failed)
    assert "best val_loss 0.2000 (trial old)" in lines[-1]
    assert "2/2 trials done (0 stopped early, 1 failed)" in lines[-1]


def test_it_travels_in_tuner_pkl_without_its_client() -> None:
    reporter = SweepProgressReporter(2, 3, "val_accuracy", "max", "run")
    reporter.ended["a"] = "TERMINATED"
    reporter._buffer = tracking.MetricBuffer("run")
    copy = pickle.loads(pickle.dumps(reporter))  # noqa: S301 - the object this test made
    assert copy.ended == {"a": "TERMINATED"} and copy._buffer is None
    assert copy.started == reporter.started  # a resumed sweep counts from its start
