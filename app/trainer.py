"""The training driver: one MLflow run around one Ray Train ``TorchTrainer`` fit.

Flow: load the data (fails fast on a missing dataset), create or resume the MLflow run, fit on
Ray Train workers (rank 0 streams metrics to the run and checkpoints every epoch), then on the
driver: score the final model on the test split, log the per-class table and figures, log the
model, and register it when asked. The same function trains one Tune trial (``parent_run_id``
nests the run under the sweep).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow

from app import tracking
from app.config import TrainConfig
from app.data import ImageSplits, load_dataset
from app.evaluation import (
    evaluate_model,
    plot_confusion_matrix,
    plot_hardest_errors,
    plot_learning_curve,
)
from app.models import ModelSpec, build_model
from app.training import RayWorkerContext, load_state, train_worker

REPO_ROOT = Path(__file__).resolve().parent.parent
RAY_RUN_NAME_TAG = "ray_run_name"


@dataclass
class TrainOutcome:
    run_id: str
    experiment_id: str
    model_uri: str
    test_accuracy: float
    test_macro_f1: float
    val_accuracy: float
    epochs: int
    wall_seconds: float
    registered_version: str | None = None
    per_class: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def ensure_ray() -> None:
    """Connect to the running cluster (inside ``ray job submit`` or after ``ray start``), or
    start a local one. Workers of a plain ``python jobs/x.py`` get the repo on their path."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        ray.init()  # a submitted job: its runtime env (working_dir) already carries the code
    else:
        pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})


def ray_job_id() -> str | None:
    import ray

    return os.environ.get("RAY_JOB_SUBMISSION_ID") or (
        ray.get_runtime_context().get_job_id() if ray.is_initialized() else None
    )


def _worker_entry(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray

    cfg = TrainConfig.model_validate(loop_config["config"])
    splits: ImageSplits = ray.get(loop_config["data"])
    ctx = RayWorkerContext()
    sink = None
    if ctx.rank == 0:
        sink = tracking.MetricBuffer(loop_config["run_id"])
    train_worker(cfg, splits, ctx, sink)


def _find_resumable_run(cfg: TrainConfig) -> str | None:
    """The MLflow run of an earlier attempt with the same Ray run name, so a resumed job keeps
    logging into one run instead of starting a duplicate."""
    if not cfg.run_name:
        return None
    experiment = tracking.client().get_experiment_by_name(cfg.experiment)
    if experiment is None:
        return None
    runs = tracking.client().search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.{RAY_RUN_NAME_TAG} = '{cfg.run_name}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def fit(
    cfg: TrainConfig,
    splits: ImageSplits | None = None,
    parent_run_id: str | None = None,
    callbacks: Sequence[Any] = (),
    extra_tags: dict[str, str] | None = None,
) -> TrainOutcome:
    """Train, evaluate, log and (optionally) register one model. Raises on failure after
    marking the MLflow run FAILED."""
    import ray

    # Train V2's classes (the V1 names in ray.train are the same objects when V2 is on).
    from ray.train.v2.api.config import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.torch.torch_trainer import TorchTrainer

    started = time.perf_counter()
    tracking.configure()
    splits = splits or load_dataset(
        cfg.dataset, cfg.data_dir, cfg.download, cfg.val_fraction, cfg.seed
    )
    ensure_ray()
    run_name = cfg.run_name or f"{cfg.dataset}-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_id = _find_resumable_run(cfg)
    if run_id is None:
        tags = {
            "dataset": cfg.dataset,
            "model": cfg.model,
            "dataset_fingerprint": splits.fingerprint,
            "git_commit": tracking.git_commit() or "",
            "ray_job_id": ray_job_id() or "",
            RAY_RUN_NAME_TAG: run_name,
            **(extra_tags or {}),
        }
        run_id = tracking.start_run(
            cfg.experiment, run_name, cfg.model_dump(mode="json"), tags, parent_run_id
        )
    else:
        print(f"resuming MLflow run {run_id} (ray run {run_name})", flush=True)
    print(f"MLflow run {run_id} at {tracking.tracking_uri()}", flush=True)

    try:
        trainer = TorchTrainer(
            _worker_entry,
            train_loop_config={
                "config": cfg.model_dump(mode="json"),
                "data": ray.put(splits),
                "run_id": run_id,
            },
            scaling_config=ScalingConfig(
                num_workers=cfg.num_workers,
                use_gpu=cfg.use_gpu,
                resources_per_worker={"CPU": cfg.cpus_per_worker}
                | ({"GPU": 1} if cfg.use_gpu else {}),
            ),
            run_config=RunConfig(
                name=run_name,
                storage_path=cfg.storage_path,
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                callbacks=list(callbacks),
                worker_runtime_env={"env_vars": tracking.worker_env()},
            ),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError("training finished without a checkpoint")
        with result.checkpoint.as_directory() as folder:
            state = load_state(Path(folder))
        outcome = _finish(cfg, splits, run_id, state)
    except BaseException:
        tracking.client().set_terminated(run_id, status="FAILED")
        raise
    outcome.wall_seconds = time.perf_counter() - started
    tracking.client().log_metric(run_id, "wall_seconds", outcome.wall_seconds)
    tracking.client().set_terminated(run_id, status="FINISHED")
    return outcome


def _finish(
    cfg: TrainConfig, splits: ImageSplits, run_id: str, state: dict[str, Any]
) -> TrainOutcome:
    """Driver-side, after training: test metrics, table, figures, model, registry."""
    spec = ModelSpec.for_dataset(cfg.model, splits.info)
    model = build_model(spec)
    model.load_state_dict(state["model"])
    report, probabilities = evaluate_model(model, splits.x_test, splits.y_test, splits.info)
    history: list[dict[str, float]] = state["history"]
    test_metrics = tracking.MetricBuffer(run_id)
    test_metrics.log(
        {"test_accuracy": report.accuracy, "test_macro_f1": report.macro_f1},
        step=state["global_step"],
    )
    test_metrics.flush()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        client = tracking.client()
        for figure in (
            plot_confusion_matrix(report, spec.classes, folder / "confusion_matrix.png"),
            plot_learning_curve(history, folder / "learning_curve.png"),
            plot_hardest_errors(
                splits.x_test,
                splits.y_test,
                probabilities,
                spec.classes,
                folder / "hardest_errors.png",
            ),
        ):
            client.log_artifact(run_id, str(figure), "evaluation")
        client.log_table(run_id, report.table(), "evaluation/per_class_metrics.json")
    example = splits.x_test[:4].permute(0, 2, 3, 1).squeeze(-1).numpy()
    model_uri = tracking.log_model(
        run_id, {k: v.cpu() for k, v in state["model"].items()}, spec, example
    )
    version = None
    if cfg.register_as:
        version = tracking.register_model(
            model_uri, cfg.register_as, {"dataset": cfg.dataset, "run_id": run_id}
        )
        if cfg.alias:
            tracking.set_alias(cfg.register_as, cfg.alias, version)
        print(
            f"registered {cfg.register_as} version {version}"
            + (f" as @{cfg.alias}" if cfg.alias else ""),
            flush=True,
        )
    print(
        f"test accuracy {report.accuracy:.4f}  macro F1 {report.macro_f1:.4f}  model {model_uri}",
        flush=True,
    )
    experiment_id = mlflow.get_run(run_id).info.experiment_id
    return TrainOutcome(
        run_id=run_id,
        experiment_id=str(experiment_id),
        model_uri=model_uri,
        test_accuracy=report.accuracy,
        test_macro_f1=report.macro_f1,
        val_accuracy=history[-1]["val_accuracy"],
        epochs=len(history),
        wall_seconds=0.0,
        registered_version=version,
        per_class=[score.__dict__ for score in report.per_class],
    )
