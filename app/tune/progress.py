"""What a long sweep shows while it runs: trials done (stopped early, failed), running and
waiting, the best result so far and an estimate of the time left. It is one console line, at
most every ``every_s`` seconds and whenever a trial ends, and the same figures go to the sweep's
parent MLflow run (step: seconds since the sweep started), so the UI charts them.

The estimate assumes the trials still to come end at the rate the finished ones did. Under
ASHA most trials stop early, so the rate is measured, not computed from the epochs."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ray.tune import Callback

from app import tracking
from app.tune.rungs import TIME_ATTR

REPORT_EVERY_S = 30.0


@dataclass(frozen=True)
class Progress:
    total: int
    done: int  # ended, whichever way
    stopped_early: int  # of those, stopped by the scheduler before their last epoch
    failed: int
    running: int
    elapsed_s: float
    best: float | None = None
    best_trial: str | None = None

    @property
    def waiting(self) -> int:
        return max(0, self.total - self.done - self.running)

    @property
    def eta_s(self) -> float | None:
        if not self.done:
            return None
        return self.elapsed_s / self.done * (self.total - self.done)

    def line(self, metric: str) -> str:
        best = (
            f"best {metric} {self.best:.4f} (trial {self.best_trial})"
            if self.best is not None
            else f"no {metric} yet"
        )
        eta = "" if self.eta_s is None else f", about {_duration(self.eta_s)} left"
        return (
            f"sweep: {self.done}/{self.total} trials done ({self.stopped_early} stopped early, "
            f"{self.failed} failed), {self.running} running, {self.waiting} waiting; {best}; "
            f"{_duration(self.elapsed_s)} elapsed{eta}"
        )

    def metrics(self, metric: str) -> dict[str, float]:
        figures = {
            "sweep_trials_done": float(self.done),
            "sweep_trials_stopped_early": float(self.stopped_early),
            "sweep_trials_failed": float(self.failed),
            "sweep_trials_running": float(self.running),
            "sweep_elapsed_seconds": self.elapsed_s,
        }
        if self.best is not None:
            figures[f"sweep_best_{metric}"] = self.best
        if self.eta_s is not None:
            figures["sweep_eta_seconds"] = self.eta_s
        return figures


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def count(
    trials: Sequence[Any],
    total: int,
    epochs: int,
    elapsed_s: float,
    ended: Mapping[str, str] | None = None,
) -> Progress:
    """``trials``: Tune's Trial objects so far (a searcher creates them as slots free up);
    ``ended``: trial id -> TERMINATED/ERROR for trials that ended but whose status Tune has
    not updated yet (it calls back first, then stops the trial's actor)."""
    ended = ended or {}

    def status(trial: Any) -> str:
        return ended.get(trial.trial_id) or trial.status

    finished = [t for t in trials if status(t) in ("TERMINATED", "ERROR")]
    return Progress(
        total=max(total, len(trials)),  # a grid search makes num_samples x the grid
        done=len(finished),
        stopped_early=sum(
            status(t) == "TERMINATED" and (t.last_result or {}).get(TIME_ATTR, epochs) < epochs
            for t in finished
        ),
        failed=sum(status(t) == "ERROR" for t in finished),
        running=sum(status(t) == "RUNNING" for t in trials),
        elapsed_s=elapsed_s,
    )


class SweepProgressReporter(Callback):
    """The sweep driver's Tune callback that prints and records ``Progress``. Tune pickles it
    with the sweep (tuner.pkl), so a resumed sweep goes on counting from the sweep's start."""

    def __init__(
        self,
        total: int,
        epochs: int,
        metric: str,
        mode: str,
        parent_run_id: str,
        every_s: float = REPORT_EVERY_S,
        clock: Callable[[], float] = time.time,
        out: Callable[[str], None] | None = None,
    ) -> None:
        self.total, self.epochs, self.metric, self.mode = total, epochs, metric, mode
        self.parent_run_id = parent_run_id
        # None: print, looked up when used (Ray may have replaced builtins.print by then, and a
        # stored reference to the old one no longer pickles).
        self.every_s, self.clock, self.out = every_s, clock, out
        self.started = clock()
        self.last_report = float("-inf")
        self.best: tuple[float, str] | None = None
        self.ended: dict[str, str] = {}
        self._buffer: tracking.MetricBuffer | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_buffer": None}  # a client does not travel in tuner.pkl

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best[0] if self.mode == "max" else value < self.best[0]

    def _consider(self, result: Mapping[str, Any] | None, trial_id: str) -> None:
        value = (result or {}).get(self.metric)
        if isinstance(value, int | float) and self._better(float(value)):
            self.best = (float(value), trial_id)

    def progress(self, trials: Sequence[Any]) -> Progress:
        for trial in trials:  # a resumed sweep's finished trials, which report nothing again
            self._consider(trial.last_result, trial.trial_id)
        counted = count(trials, self.total, self.epochs, self.clock() - self.started, self.ended)
        if self.best is None:
            return counted
        return replace(counted, best=self.best[0], best_trial=self.best[1])

    def report(self, trials: Sequence[Any]) -> None:
        self.last_report = self.clock()
        progress = self.progress(trials)
        line = progress.line(self.metric)
        if self.out is None:
            print(line, flush=True)
        else:
            self.out(line)
        if self._buffer is None:
            self._buffer = tracking.MetricBuffer(self.parent_run_id)
        # Best effort: an unreachable server keeps the figures queued for the next report.
        self._buffer.log(progress.metrics(self.metric), step=round(progress.elapsed_s))
        self._buffer.flush()

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        self._consider(result, trial.trial_id)
        if self.clock() - self.last_report >= self.every_s:
            self.report(trials)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.ended[trial.trial_id] = "TERMINATED"
        self.report(trials)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.ended[trial.trial_id] = "ERROR"
        self.report(trials)
