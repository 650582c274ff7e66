"""Hyperparameter sweeps: Ray Tune over Ray Train, one nested MLflow run per trial.

Ray 2.60 pattern (Train V2): each Tune trial is a function that builds and fits a
``TorchTrainer`` (``app.trainer.fit``) with ``TuneReportCallback``, so every epoch's metrics
reach the scheduler (ASHA stops weak trials at its rungs). The trial function itself holds a
small CPU fraction; its Train workers hold the rest.

MLflow: the sweep driver opens one parent run; each trial's ``fit`` opens exactly one child
run under it (named after the trial, so a resumed trial finds and continues its own run); a
driver-side Tune callback closes runs of trials that Tune stopped (KILLED) or that failed.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app import tracking
from app.config import ALIAS_PATTERN, ConfigError, TrainConfig, flag_name
from app.data import ImageSplits, load_dataset

TRIAL_DRIVER_CPU = 0.1  # the Tune trial function only waits on its TorchTrainer
SWEEP_TAG = "sweep"
TRIAL_TAG = "trial_id"
BEST_TAG = "best_trial"


def trial_fields(cfg: TrainConfig) -> dict[str, Any]:
    """The training fields of a (sweep) config, minus what only the sweep does (register)."""
    fields = set(TrainConfig.model_fields) - {"register_as", "alias", "results_json"}
    return cfg.model_dump(mode="json", include=fields)


# ---------------------------------------------------------------------------------------------
# Search space: a small typed language, validated before any trial starts


class _Dimension(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Range(_Dimension):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self

    def bounds(self) -> list[Any]:
        return [self.low, self.high]


class LogUniform(_Range):
    type: Literal["loguniform"]
    low: float = Field(gt=0)
    high: float = Field(gt=0)


class Uniform(_Range):
    type: Literal["uniform"]


class Choice(_Dimension):
    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)

    def bounds(self) -> list[Any]:
        return self.values


Dimension = Annotated[LogUniform | Uniform | Choice, Field(discriminator="type")]

# The mission's defaults: lr log-uniform 1e-4..1e-2, weight decay log-uniform 1e-5..1e-3,
# momentum uniform 0.8..0.99, a batch-size choice.
DEFAULT_SPACE: dict[str, Any] = {
    "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
    "weight_decay": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
    "momentum": {"type": "uniform", "low": 0.8, "high": 0.99},
    "batch_size": {"type": "choice", "values": [32, 64, 128]},
}


class SearchSpace(BaseModel):
    """Field name -> dimension. Every bound must itself be a valid training value."""

    dimensions: dict[str, Dimension]

    @classmethod
    def parse(cls, raw: Any, base: TrainConfig, source: str) -> SearchSpace:
        if not isinstance(raw, dict) or not raw:
            raise ConfigError(f"{source}: a search space is a non-empty mapping field: dimension")
        try:
            space = cls(dimensions={str(k).replace("-", "_"): v for k, v in raw.items()})
        except ValidationError as exc:
            lines = [
                f"  {'.'.join(map(str, e['loc'][1:]))}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            ]
            raise ConfigError(f"{source}: invalid search space:\n" + "\n".join(lines)) from exc
        space.check_against(base, source)
        return space

    def check_against(self, base: TrainConfig, source: str) -> None:
        tunable = set(TrainConfig.model_fields) - NOT_TUNABLE
        errors = []
        for name, dimension in self.dimensions.items():
            if name not in tunable:
                errors.append(f"  {name}: not a tunable training field")
                continue
            for value in dimension.bounds():
                try:
                    TrainConfig.model_validate({**trial_fields(base), name: value})
                except ValidationError as exc:
                    errors.append(f"  {name}={value!r}: {exc.errors()[0]['msg']}")
        if errors:
            raise ConfigError(f"{source}: invalid search space:\n" + "\n".join(errors))

    def to_tune(self, grid: bool) -> dict[str, Any]:
        """Ray Tune sampling objects; with ``grid`` every choice becomes a grid axis."""
        from ray import tune

        out: dict[str, Any] = {}
        for name, dim in self.dimensions.items():
            if isinstance(dim, LogUniform):
                out[name] = tune.loguniform(dim.low, dim.high)
            elif isinstance(dim, Uniform):
                out[name] = tune.uniform(dim.low, dim.high)
            else:
                out[name] = tune.grid_search(dim.values) if grid else tune.choice(dim.values)
        return out

    def describe(self) -> dict[str, Any]:
        return {name: dim.model_dump() for name, dim in self.dimensions.items()}


# Fields a sweep fixes for every trial (they name where things go, not how a model learns).
NOT_TUNABLE = {
    "results_json",
    "experiment",
    "run_name",
    "register_as",
    "alias",
    "storage_path",
    "data_dir",
    "download",
    "dataset",
    "num_workers",
    "use_gpu",
    "cpus_per_worker",
    "max_failures",
    "log_every_n_batches",
    "val_fraction",
}


# ---------------------------------------------------------------------------------------------
# Sweep configuration


class TuneConfig(TrainConfig):
    """A sweep: every training field (applied to each trial; ``epochs`` is the maximum) plus
    search, scheduling and resume settings."""

    num_samples: int = Field(8, ge=1, le=100_000, description="trials to run")
    max_concurrent: int | None = Field(
        None, ge=1, le=10_000, description="trials at once (default: as many as the cluster fits)"
    )
    scheduler: Literal["asha", "none"] = Field("asha", description="early stopping")
    search: Literal["hyperopt", "random", "grid"] = Field("hyperopt", description="search alg")
    grace_period: int = Field(1, ge=1, description="ASHA: epochs before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep 1/factor at each rung")
    metric: str = Field("val_accuracy", min_length=1, description="metric to optimise")
    mode: Literal["max", "min"] = Field("max", description="maximise or minimise the metric")
    space_file: Path | None = Field(None, description="YAML search space (overrides the default)")
    points_to_evaluate: str | None = Field(
        None, description="hyperopt warm start: a JSON list of configs, or a YAML/JSON file of one"
    )
    resume: bool = Field(False, description="resume the sweep named by --run-name (or the latest)")
    alias: str | None = Field(
        "challenger", pattern=ALIAS_PATTERN, description="alias for the registered best model"
    )

    def space(self) -> SearchSpace:
        if self.space_file is None:
            return SearchSpace.parse(DEFAULT_SPACE, self, "default search space")
        try:
            raw = yaml.safe_load(self.space_file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"--space-file: cannot read {self.space_file}: {exc}") from exc
        return SearchSpace.parse(raw, self, str(self.space_file))

    def warm_start(self, space: SearchSpace) -> list[dict[str, Any]]:
        if not self.points_to_evaluate:
            return []
        text = self.points_to_evaluate.strip()
        source = flag_name("points_to_evaluate")
        try:
            raw = yaml.safe_load(text if text.startswith("[") else Path(text).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{source}: cannot read {text!r}: {exc}") from exc
        if not isinstance(raw, list) or not all(isinstance(p, dict) for p in raw):
            raise ConfigError(f"{source}: expected a list of {{field: value}} mappings")
        for point in raw:
            unknown = set(point) - set(space.dimensions)
            if unknown:
                raise ConfigError(f"{source}: {sorted(unknown)} not in the search space")
            SearchSpace.parse(
                {k: {"type": "choice", "values": [v]} for k, v in point.items()}, self, source
            )
        return raw

    def trial_base(self) -> dict[str, Any]:
        """The TrainConfig every trial starts from."""
        return trial_fields(self)


def validate_before_start(cfg: TuneConfig) -> tuple[SearchSpace, list[dict[str, Any]]]:
    space = cfg.space()
    return space, cfg.warm_start(space)


# ---------------------------------------------------------------------------------------------
# Sizing trials to the cluster


@dataclass(frozen=True)
class TrialPlan:
    max_concurrent: int
    cpus_per_worker: float
    cluster_cpus: float
    cluster_gpus: float


def plan_trials(cfg: TuneConfig, cluster_cpus: float, cluster_gpus: float) -> TrialPlan:
    """How many trials run at once and how many CPUs each worker gets, so that every
    concurrent trial fits (too little room deadlocks worker-group start-up)."""
    per_trial_gpus = cfg.num_workers if cfg.use_gpu else 0
    explicit_cpus = "cpus_per_worker" in cfg.model_fields_set
    if cfg.max_concurrent is not None:
        concurrent = cfg.max_concurrent
    else:
        cpu_room = cluster_cpus // (cfg.num_workers * cfg.cpus_per_worker + TRIAL_DRIVER_CPU)
        gpu_room = cluster_gpus // per_trial_gpus if per_trial_gpus else math.inf
        concurrent = int(max(1, min(cpu_room, gpu_room, cfg.num_samples)))
    cpus_per_worker = cfg.cpus_per_worker
    needed = concurrent * (cfg.num_workers * cpus_per_worker + TRIAL_DRIVER_CPU)
    if needed > cluster_cpus + 1e-9:
        if explicit_cpus:
            raise ConfigError(
                f"{concurrent} concurrent trials x {cfg.num_workers} workers x "
                f"{cpus_per_worker} CPUs (+{TRIAL_DRIVER_CPU} per trial) need {needed:g} CPUs; "
                f"the cluster has {cluster_cpus:g}. Lower --max-concurrent or --cpus-per-worker."
            )
        room = (cluster_cpus - concurrent * TRIAL_DRIVER_CPU) / (concurrent * cfg.num_workers)
        cpus_per_worker = math.floor(room * 100) / 100
        if cpus_per_worker < 0.01:
            raise ConfigError(
                f"{concurrent} concurrent trials of {cfg.num_workers} workers do not fit on "
                f"{cluster_cpus:g} CPUs. Lower --max-concurrent or --num-workers."
            )
    if per_trial_gpus and concurrent * per_trial_gpus > cluster_gpus:
        raise ConfigError(
            f"{concurrent} concurrent trials x {per_trial_gpus} GPUs exceed the cluster's "
            f"{cluster_gpus:g} GPUs (an autoscaling cluster: set --max-concurrent explicitly)."
        )
    return TrialPlan(concurrent, cpus_per_worker, cluster_cpus, cluster_gpus)


# ---------------------------------------------------------------------------------------------
# The sweep


def _trial_function(
    trial_params: dict[str, Any],
    base: dict[str, Any],
    sweep: str,
    parent_run_id: str,
    splits: ImageSplits,
) -> None:
    """One trial: a TorchTrainer fit whose epochs report to Tune, logged as a child run."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from app.trainer import fit

    trial_id = tune.get_context().get_trial_id()
    cfg = TrainConfig.model_validate({**base, **trial_params, "run_name": f"{sweep}-{trial_id}"})
    fit(
        cfg,
        splits,
        parent_run_id=parent_run_id,
        callbacks=[TuneReportCallback()],
        extra_tags={SWEEP_TAG: sweep, TRIAL_TAG: trial_id},
        close_run_on_error=False,
    )


def _child_runs(experiment_id: str, parent_run_id: str) -> list[Any]:
    return tracking.client().search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        max_results=10_000,
    )


def _mlflow_closer(experiment: str, parent_run_id: str) -> Any:
    """A Tune callback (driver side) that gives every trial's run its final status: a trial
    Tune stopped early never reaches the end of ``fit``, so its run is closed here."""
    from ray.tune import Callback

    class MlflowTrialCloser(Callback):
        def _close(self, trial: Any, error: bool) -> None:
            experiment_id = tracking.ensure_experiment(experiment)
            runs = tracking.client().search_runs(
                [experiment_id],
                filter_string=f"tags.{TRIAL_TAG} = '{trial.trial_id}' and "
                f"tags.mlflow.parentRunId = '{parent_run_id}'",
            )
            for run in runs:
                if run.info.status != "RUNNING":
                    continue  # the trial's own fit() closed it
                # Logged its test metrics: it trained every epoch and was stopped only at its
                # final report. Otherwise the scheduler stopped it early (or it failed).
                completed = "test_accuracy" in run.data.metrics
                status = "FAILED" if error else "FINISHED" if completed else "KILLED"
                tracking.set_tags(
                    run.info.run_id,
                    {"trial_status": status, "early_stopped": str(status == "KILLED")},
                )
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


def _find_parent_run(experiment: str, sweep: str) -> str | None:
    found = tracking.client().search_runs(
        [tracking.ensure_experiment(experiment)],
        filter_string=f"tags.{SWEEP_TAG} = '{sweep}' and tags.sweep_parent = 'true'",
        max_results=1,
    )
    return found[0].info.run_id if found else None


def run_sweep(cfg: TuneConfig) -> dict[str, Any]:
    """Run (or resume) a sweep; tag the best trial, register its model; return the summary."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.hyperopt import HyperOptSearch

    from app.trainer import ensure_ray

    started = time.perf_counter()
    space, warm_start = validate_before_start(cfg)
    tracking.configure()
    splits = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, cfg.val_fraction, cfg.seed)
    ensure_ray()
    resources = ray.cluster_resources()
    plan = plan_trials(cfg, resources.get("CPU", 0), resources.get("GPU", 0))
    base = {**cfg.trial_base(), "cpus_per_worker": plan.cpus_per_worker}
    storage = Path(cfg.storage_path or Path.home() / "ray_results").expanduser()
    if cfg.storage_path and "://" in cfg.storage_path:
        storage_uri = cfg.storage_path
    else:
        storage.mkdir(parents=True, exist_ok=True)
        storage_uri = str(storage.resolve())
    base["storage_path"] = storage_uri

    prefix = f"tune-{cfg.dataset}-{cfg.model}"
    sweep = (
        cfg.run_name
        or (_latest_sweep(storage, prefix) if cfg.resume else None)
        or f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    parent_run_id = _find_parent_run(cfg.experiment, sweep) if cfg.resume else None
    if parent_run_id is None:
        parent_run_id = tracking.start_run(
            cfg.experiment,
            sweep,
            {
                "search_space": json.dumps(space.describe()),
                "scheduler": cfg.scheduler,
                "search": cfg.search,
                "num_samples": cfg.num_samples,
                "max_concurrent": plan.max_concurrent,
                "metric": cfg.metric,
                "mode": cfg.mode,
                "grace_period": cfg.grace_period,
                "reduction_factor": cfg.reduction_factor,
                "cluster_cpus": plan.cluster_cpus,
                "cluster_gpus": plan.cluster_gpus,
                "cpus_per_worker": plan.cpus_per_worker,
                "trial": base,
            },
            {
                SWEEP_TAG: sweep,
                "sweep_parent": "true",
                "dataset": cfg.dataset,
                "git_commit": tracking.git_commit() or "",
            },
        )
    print(
        f"sweep {sweep}: {cfg.num_samples} trials, {plan.max_concurrent} at once, "
        f"{cfg.num_workers} workers x {plan.cpus_per_worker} CPU each; "
        f"MLflow parent run {parent_run_id}",
        flush=True,
    )

    trainable = tune.with_resources(
        tune.with_parameters(
            _trial_function, base=base, sweep=sweep, parent_run_id=parent_run_id, splits=splits
        ),
        {"CPU": TRIAL_DRIVER_CPU},
    )
    run_config = tune.RunConfig(
        name=sweep,
        storage_path=storage_uri,
        callbacks=[_mlflow_closer(cfg.experiment, parent_run_id)],
        failure_config=tune.FailureConfig(max_failures=0),
    )
    if cfg.resume and tune.Tuner.can_restore(f"{storage_uri}/{sweep}"):
        print(f"resuming sweep from {storage_uri}/{sweep}", flush=True)
        tuner = tune.Tuner.restore(
            f"{storage_uri}/{sweep}",
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
    else:
        if cfg.resume:
            raise ConfigError(f"--resume: no sweep to resume at {storage_uri}/{sweep}")
        if cfg.search == "hyperopt":
            search_alg: Any = ConcurrencyLimiter(
                HyperOptSearch(
                    metric=cfg.metric,
                    mode=cfg.mode,
                    random_state_seed=cfg.seed,
                    points_to_evaluate=warm_start or None,
                ),
                max_concurrent=plan.max_concurrent,
            )
        else:
            search_alg = BasicVariantGenerator(
                points_to_evaluate=warm_start or None,
                random_state=cfg.seed,
                max_concurrent=plan.max_concurrent,
            )
        scheduler = (
            ASHAScheduler(
                time_attr="training_iteration",
                max_t=cfg.epochs,
                grace_period=min(cfg.grace_period, cfg.epochs),
                reduction_factor=cfg.reduction_factor,
            )
            if cfg.scheduler == "asha"
            else FIFOScheduler()
        )
        tuner = tune.Tuner(
            trainable,
            param_space=space.to_tune(grid=cfg.search == "grid"),
            tune_config=tune.TuneConfig(
                metric=cfg.metric,
                mode=cfg.mode,
                num_samples=cfg.num_samples,
                search_alg=search_alg,
                scheduler=scheduler,
                max_concurrent_trials=plan.max_concurrent,
            ),
            run_config=run_config,
        )
    tuner.fit()
    summary = summarise(cfg, sweep, parent_run_id, space)
    summary["wall_seconds"] = time.perf_counter() - started
    tracking.client().set_terminated(parent_run_id, status="FINISHED")
    return summary


def summarise(
    cfg: TuneConfig, sweep: str, parent_run_id: str, space: SearchSpace
) -> dict[str, Any]:
    """Tag the best trial, log the best config to the parent, register the best model, print
    a table of trials."""
    client = tracking.client()
    experiment_id = tracking.ensure_experiment(cfg.experiment)
    runs = _child_runs(experiment_id, parent_run_id)
    statuses = Counter(run.info.status for run in runs)
    finished = [r for r in runs if r.info.status == "FINISHED" and cfg.metric in r.data.metrics]
    sign = 1 if cfg.mode == "max" else -1
    best = max(finished, key=lambda r: sign * r.data.metrics[cfg.metric], default=None)
    print_trial_table(runs, space, cfg.metric, best.info.run_id if best else None)
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
    }
    if best is None:
        print("no trial finished: nothing to register", flush=True)
        return summary
    best_config = {name: best.data.params[name] for name in space.dimensions}
    tracking.set_tags(best.info.run_id, {BEST_TAG: "true"})
    tracking.set_tags(
        parent_run_id, {"best_run_id": best.info.run_id, "best_config": json.dumps(best_config)}
    )
    buffer = tracking.MetricBuffer(parent_run_id, client)
    buffer.log(
        {
            f"best_{cfg.metric}": best.data.metrics[cfg.metric],
            "best_test_accuracy": best.data.metrics.get("test_accuracy", float("nan")),
        },
        step=0,
    )
    buffer.flush()
    summary.update(
        best_run_id=best.info.run_id,
        best_config=best_config,
        best_val_accuracy=best.data.metrics.get("val_accuracy"),
        test_accuracy=best.data.metrics.get("test_accuracy"),
    )
    if cfg.register_as:
        model_uri = f"runs:/{best.info.run_id}/{tracking.MODEL_ARTIFACT_PATH}"
        version = tracking.register_model(
            model_uri,
            cfg.register_as,
            {"dataset": cfg.dataset, "run_id": best.info.run_id, "sweep": sweep},
        )
        if cfg.alias:
            tracking.set_alias(cfg.register_as, cfg.alias, version)
        summary["registered_version"] = version
        print(f"registered {cfg.register_as} version {version} as @{cfg.alias}", flush=True)
    return summary


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
