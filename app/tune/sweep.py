"""Hyperparameter sweeps: Ray Tune over Ray Train, one nested MLflow run per trial.

Ray 2.60 pattern (Train V2): each Tune trial is a function that builds and fits a
``TorchTrainer`` (``app.train.driver.fit``) with ``TuneReportCallback``, so every epoch's
metrics reach the scheduler (ASHA stops weak trials at its rungs, which a resumed sweep keeps:
``app.tune.rungs``). The trial function itself holds a small CPU fraction; its Train workers
hold the rest.

MLflow: the sweep driver opens one parent run; each trial's ``fit`` opens exactly one child
run under it (named after the trial, so a resumed trial finds and continues its own run); a
driver-side Tune callback closes runs of trials that Tune stopped (KILLED) or that failed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from app import tracking
from app.code_version import code_version
from app.config import ConfigError
from app.dataset_lineage import log_dataset
from app.datasets import ImageSplits, load_splits
from app.ray_runtime import ensure_ray, host_train_coordinator_here, release_own_placement_groups
from app.train.config import TrainConfig
from app.tune.config import TuneConfig, validate_before_start
from app.tune.plan import (
    TRIAL_DRIVER_CPU,
    TrialPlan,
    cluster_capacity,
    parse_node_types,
    plan_trials,
)
from app.tune.report import SWEEP_TAG, TRIAL_TAG, summarise
from app.tune.space import SearchSpace

# ---------------------------------------------------------------------------------------------
# The sweep


def _trial_function(
    trial_params: dict[str, Any],
    base: dict[str, Any],
    sweep: str,
    parent_run_id: str,
    splits: ImageSplits,
    metric: str,
) -> None:
    """One trial: a TorchTrainer fit whose epochs report to Tune, logged as a child run."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from app.cost.usage import held_here, held_tag
    from app.train.driver import fit
    from app.tune.rungs import replay_recorded_epochs

    trial_id = tune.get_context().get_trial_id()
    cfg = TrainConfig.model_validate({**base, **trial_params, "run_name": f"{sweep}-{trial_id}"})
    replay_recorded_epochs(cfg, metric)  # a resumed trial: the scheduler sees its epochs again
    fit(
        cfg,
        splits,
        parent_run_id=parent_run_id,
        callbacks=[TuneReportCallback()],
        extra_tags={
            SWEEP_TAG: sweep,
            TRIAL_TAG: trial_id,
            **held_tag("trial", held_here(TRIAL_DRIVER_CPU, 0)),
        },
        close_run_on_error=False,
    )


def _mlflow_closer(experiment: str, parent_run_id: str) -> Any:
    """A Tune callback (driver side) that gives every trial's run its final status: a trial
    Tune stopped early never reaches the end of ``fit``, so its run is closed here."""
    from ray.tune import Callback

    from app.cost.record import record_run_cost
    from app.tune.rungs import TIME_ATTR

    class MlflowTrialCloser(Callback):
        def _close(self, trial: Any, error: bool) -> None:
            experiment_id = tracking.ensure_experiment(experiment)
            runs = tracking.client().search_runs(
                [experiment_id],
                filter_string=f"tags.{TRIAL_TAG} = '{trial.trial_id}' and "
                f"tags.mlflow.parentRunId = '{parent_run_id}'",
            )
            for run in runs:
                # Logged its test metrics: it trained every epoch and was stopped only at its
                # final report. Otherwise the scheduler stopped it early (or it failed).
                completed = "test_accuracy" in run.data.metrics
                status = "FAILED" if error else "FINISHED" if completed else "KILLED"
                if "cost_usd" not in run.data.metrics:
                    # Its fit() never got to price it: the scheduler stopped the trial, early or
                    # at its final report (by which time logging the model has closed the run).
                    record_run_cost(run.info.run_id, stopped_early=status == "KILLED")
                if run.info.status != "RUNNING":
                    continue  # closed by the trial's own fit(), or when its model was logged
                tags = {"trial_status": status, "early_stopped": str(status == "KILLED")}
                if status == "KILLED" and TIME_ATTR in trial.last_result:
                    # Where the scheduler stopped it: its workers may log one more epoch.
                    tags["stopped_at_epoch"] = str(int(trial.last_result[TIME_ATTR]))
                tracking.set_tags(run.info.run_id, tags)
                tracking.client().set_terminated(run.info.run_id, status=status)

        def on_trial_complete(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            self._close(trial, error=False)

        def on_trial_error(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            self._close(trial, error=True)

    return MlflowTrialCloser()


def _latest_sweep(storage: Path, prefix: str) -> str | None:
    candidates = sorted(
        (p for p in storage.glob(f"{prefix}-*") if (p / "tuner.pkl").exists()),
        key=lambda p: p.stat().st_mtime,
    )
    return candidates[-1].name if candidates else None


def _restorable(path: str) -> bool:
    """Whether a sweep's Tune state is at ``path``; state there that no sweep signed is refused
    (``UntrustedStateError``) before anything in it is unpickled."""
    from ray import tune

    from app.tune.state_signing import verify_sweep_state

    if not tune.Tuner.can_restore(path):
        return False
    verify_sweep_state(path)
    return True


def _find_parent_run(experiment: str, sweep: str) -> str | None:
    found = tracking.client().search_runs(
        [tracking.ensure_experiment(experiment)],
        filter_string=f"tags.{SWEEP_TAG} = '{sweep}' and tags.sweep_parent = 'true'",
        max_results=1,
    )
    return found[0].info.run_id if found else None


def _storage(cfg: TuneConfig) -> tuple[Path, str]:
    """Where the sweep's state goes: a local folder (created) or a remote URI, as given."""
    storage = Path(cfg.storage_path or Path.home() / "ray_results").expanduser()
    if cfg.storage_path and "://" in cfg.storage_path:
        return storage, cfg.storage_path
    storage.mkdir(parents=True, exist_ok=True)
    return storage, str(storage.resolve())


def _sweep_name(cfg: TuneConfig, storage: Path) -> str:
    prefix = f"tune-{cfg.dataset}-{cfg.model}"
    return (
        cfg.run_name
        or (_latest_sweep(storage, prefix) if cfg.resume else None)
        or f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    )


def _open_parent_run(
    cfg: TuneConfig,
    sweep: str,
    space: SearchSpace,
    plan: TrialPlan,
    base: dict[str, Any],
    resume: bool,
) -> str:
    """The sweep's parent run: found again on a resume, else created with the sweep's
    settings as params."""
    found = _find_parent_run(cfg.experiment, sweep) if resume else None
    if found is not None:
        return found
    params = {
        "search_space": json.dumps(space.describe()),
        **cfg.model_dump(
            include={
                "scheduler",
                "search",
                "num_samples",
                "metric",
                "mode",
                "grace_period",
                "reduction_factor",
            }
        ),
        "max_concurrent": plan.max_concurrent,
        "cluster_cpus": plan.cluster_cpus,
        "cluster_gpus": plan.cluster_gpus,
        "cpus_per_worker": plan.cpus_per_worker,
        "trial": base,
    }
    tags = {
        SWEEP_TAG: sweep,
        "sweep_parent": "true",
        "dataset": cfg.dataset,
        **code_version().tags(),
    }
    return tracking.start_run(cfg.experiment, sweep, params, tags)


def _release_leftover_reservations() -> None:
    """Placement groups of trials lost with their node, which would hold a node up (a failure
    to look is reported, not raised: the sweep's result stands)."""
    try:
        released = release_own_placement_groups()
    except Exception as exc:  # the state API (the dashboard) may be unreachable
        print(f"could not check for leftover placement groups: {exc}", flush=True)
        return
    if released:
        print(
            f"released {len(released)} placement group(s) that trials lost with their node left",
            flush=True,
        )


def _search_alg(cfg: TuneConfig, plan: TrialPlan, warm_start: list[dict[str, Any]]) -> Any:
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.hyperopt import HyperOptSearch

    if cfg.search != "hyperopt":
        return BasicVariantGenerator(
            points_to_evaluate=warm_start or None,
            random_state=cfg.seed,
            max_concurrent=plan.max_concurrent,
        )
    from app.tune.trial_ids import CountedTrialIds

    return CountedTrialIds(
        ConcurrencyLimiter(
            HyperOptSearch(
                metric=cfg.metric,
                mode=cfg.mode,
                random_state_seed=cfg.seed,
                points_to_evaluate=warm_start or None,
            ),
            max_concurrent=plan.max_concurrent,
        )
    )


def _scheduler(cfg: TuneConfig) -> tuple[Any, list[Any]]:
    """The trial scheduler and the callbacks that keep its state in Tune's snapshots."""
    from ray.tune.schedulers import FIFOScheduler

    from app.tune.rungs import RungKeeper, asha

    if cfg.scheduler != "asha":
        return FIFOScheduler(), []
    scheduler = asha(cfg.epochs, cfg.grace_period, cfg.reduction_factor)
    return scheduler, [RungKeeper(scheduler)]


def _tuner(
    cfg: TuneConfig,
    trainable: Any,
    run_config: Any,
    scheduler: Any,
    space: SearchSpace,
    plan: TrialPlan,
    warm_start: list[dict[str, Any]],
    resume: bool,
) -> Any:
    """A new Tuner, or on a resume the one restored from the sweep's storage (with the
    scheduler and callbacks it started with)."""
    from ray import tune

    from app.tune.state_signing import sign_new_sweep

    path = f"{run_config.storage_path}/{run_config.name}"
    if resume:
        if not _restorable(path):  # checked again here, just before Tune unpickles it
            raise ConfigError(f"--resume: no sweep to resume at {path}")
        print(f"resuming sweep from {path}", flush=True)
        return tune.Tuner.restore(
            path,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
    tuner = tune.Tuner(
        trainable,
        param_space=space.to_tune(grid=cfg.search == "grid"),
        tune_config=tune.TuneConfig(
            metric=cfg.metric,
            mode=cfg.mode,
            num_samples=cfg.num_samples,
            search_alg=_search_alg(cfg, plan, warm_start),
            scheduler=scheduler,
            max_concurrent_trials=plan.max_concurrent,
        ),
        run_config=run_config,
    )
    sign_new_sweep(path)  # tuner.pkl, which the Tuner has just written to storage
    return tuner


def run_sweep(cfg: TuneConfig) -> dict[str, Any]:
    """Run (or resume) a sweep; tag the best trial, register its model; return the summary.

    The driver's tracking calls (the parent run, closing trials' runs, the summary) outlast an
    outage of the server, as each trial's do (``tracking.outlasting_outages``)."""
    with tracking.outlasting_outages():
        return _run_sweep(cfg)


def _run_sweep(cfg: TuneConfig) -> dict[str, Any]:
    from ray import tune

    from app.tune.progress import SweepProgressReporter
    from app.tune.state_signing import StateSigner, state_key

    started = time.perf_counter()
    space, warm_start = validate_before_start(cfg)
    node_types = parse_node_types(cfg.autoscaler_node_types or "{}")
    state_key()  # the key that signs the sweep's Tune state: a bad one fails before any work
    storage, storage_uri = _storage(cfg)
    sweep = _sweep_name(cfg, storage)
    # A named sweep whose state exists resumes without --resume: a resubmitted scheduled job
    # (its --run-name is the schedule slot's) continues instead of starting over. State that no
    # sweep signed is refused here, before anything is started or opened.
    restorable = bool((cfg.resume or cfg.run_name) and _restorable(f"{storage_uri}/{sweep}"))
    if cfg.resume and not restorable:
        raise ConfigError(f"--resume: no sweep to resume at {storage_uri}/{sweep}")
    resume = cfg.resume or restorable
    tracking.configure()
    folder = cfg.image_folder_source()  # --dataset image-folder
    splits = load_splits(
        cfg.dataset, cfg.data_dir, cfg.download, cfg.val_fraction, cfg.seed, folder
    )
    ensure_ray()
    host_train_coordinator_here()
    capacity = cluster_capacity(node_types)
    plan = plan_trials(cfg, capacity)
    base = {**cfg.trial_base(), "cpus_per_worker": plan.cpus_per_worker}
    base["storage_path"] = storage_uri
    parent_run_id = _open_parent_run(cfg, sweep, space, plan, base, resume)
    log_dataset(parent_run_id, cfg.dataset, splits)
    print(
        f"sweep {sweep}: {cfg.num_samples} trials, {plan.max_concurrent} at once, "
        f"{cfg.num_workers} workers x {plan.cpus_per_worker} CPU each; "
        f"MLflow parent run {parent_run_id}",
        flush=True,
    )
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial_function,
            base=base,
            sweep=sweep,
            parent_run_id=parent_run_id,
            splits=splits,
            metric=cfg.metric,
        ),
        {"CPU": TRIAL_DRIVER_CPU},
    )
    scheduler, scheduler_callbacks = _scheduler(cfg)
    run_config = tune.RunConfig(
        name=sweep,
        storage_path=storage_uri,
        # The signer signs each experiment snapshot as Tune writes it (app.tune.state_signing).
        callbacks=[
            _mlflow_closer(cfg.experiment, parent_run_id),
            SweepProgressReporter(cfg.num_samples, cfg.epochs, cfg.metric, cfg.mode, parent_run_id),
            *scheduler_callbacks,
            StateSigner(),
        ],
        # A trial whose node is lost (its function and Train controller run there) starts again
        # and its fit() resumes the Train run from its last checkpoint.
        failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
    )
    try:
        _tuner(cfg, trainable, run_config, scheduler, space, plan, warm_start, resume).fit()
    finally:
        _release_leftover_reservations()
    summary = summarise(cfg, sweep, parent_run_id, space)
    summary["wall_seconds"] = time.perf_counter() - started
    tracking.client().set_terminated(parent_run_id, status="FINISHED")
    return summary
