"""The training driver: one MLflow run around one Ray Train ``TorchTrainer`` fit.

Flow: load the data (fails fast on a missing dataset), create or resume the MLflow run, fit on
Ray Train workers (rank 0 streams metrics to the run and checkpoints every epoch), then on the
driver: score the final model on the test split, log the per-class table and figures, log the
model, and register it when asked. The same function trains one Tune trial (``parent_run_id``
nests the run under the sweep).
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run
from torch import nn

from app import tracking
from app.train.config import TrainConfig
from app.data import ImageSplits, load_dataset
from app.evaluation import (
    evaluate_model,
    plot_confusion_matrix,
    plot_hardest_errors,
    plot_learning_curve,
)
from app.models import ModelSpec, cpu_state_dict
from app.train.context import RayWorkerContext
from app.train.loop import train_worker

REPO_ROOT = Path(__file__).resolve().parent.parent
# Ray Train gives a worker group 60 s to start; on a busy 2-core laptop importing torch in
# several fresh worker processes can take longer. Applies to clusters this process starts.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
RAY_RUN_NAME_TAG = "ray_run_name"
PER_CLASS_TABLE = "evaluation/per_class_metrics.json"


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
    run_id = loop_config["run_id"]
    if ctx.rank == 0:
        final = functools.partial(evaluate_and_log_model, cfg, splits, run_id)
        train_worker(cfg, splits, ctx, tracking.MetricBuffer(run_id), final_step=final)
    else:
        train_worker(cfg, splits, ctx)


def evaluate_and_log_model(
    cfg: TrainConfig,
    splits: ImageSplits,
    run_id: str,
    model: nn.Module,
    history: list[dict[str, float]],
    global_step: int,
) -> dict[str, float]:
    """After the last epoch (rank 0): test metrics, per-class table, figures, the model."""
    spec = ModelSpec.for_dataset(cfg.model, splits.info)
    model = model.to("cpu")  # scored, plotted and saved on CPU: any server can load it
    report, probabilities = evaluate_model(model, splits.x_test, splits.y_test, splits.info)
    test_metrics = {"test_accuracy": report.accuracy, "test_macro_f1": report.macro_f1}
    buffer = tracking.MetricBuffer(run_id)
    buffer.log(test_metrics, step=global_step)
    buffer.flush()
    client = tracking.client()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
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
        client.log_table(run_id, report.table(), PER_CLASS_TABLE)
    example = splits.x_test[:4].permute(0, 2, 3, 1).squeeze(-1).numpy()
    tracking.log_model(run_id, cpu_state_dict(model), spec, example)
    print(
        f"test accuracy {report.accuracy:.4f}  macro F1 {report.macro_f1:.4f}",
        flush=True,
    )
    return test_metrics


def _find_resumable_run(cfg: TrainConfig) -> Run | None:
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
    return runs[0] if runs else None


def fit(
    cfg: TrainConfig,
    splits: ImageSplits | None = None,
    parent_run_id: str | None = None,
    callbacks: Sequence[Any] = (),
    extra_tags: dict[str, str] | None = None,
    close_run_on_error: bool = True,
) -> TrainOutcome:
    """Train, evaluate, log and (optionally) register one model. Raises on failure after
    marking the MLflow run FAILED, unless ``close_run_on_error`` is off: in a Tune trial, a
    scheduler's stop also surfaces here as an error, and the sweep decides the status."""
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
    earlier = _find_resumable_run(cfg)
    if earlier is not None and earlier.info.status == "FINISHED":
        # A resumed sweep restarts trials that finished just as its driver died: no retraining.
        print(f"ray run {run_name} already finished as MLflow run {earlier.info.run_id}")
        return _outcome(cfg, earlier.info.run_id, earlier.data.metrics)
    if earlier is None:
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
        run_id = earlier.info.run_id
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
        if not result.metrics or "test_accuracy" not in result.metrics:
            raise RuntimeError(f"training ended without its final report: {result.error}")
        outcome = _outcome(cfg, run_id, result.metrics)
    except BaseException:
        if close_run_on_error:
            tracking.client().set_terminated(run_id, status="FAILED")
        raise
    outcome.wall_seconds = time.perf_counter() - started
    tracking.client().log_metric(run_id, "wall_seconds", outcome.wall_seconds)
    tracking.client().set_terminated(run_id, status="FINISHED")
    return outcome


def _outcome(cfg: TrainConfig, run_id: str, final: dict[str, Any]) -> TrainOutcome:
    """Driver side, after training: register the logged model, collect the summary."""
    model_uri = f"runs:/{run_id}/{tracking.MODEL_ARTIFACT_PATH}"
    version = None
    if cfg.register_as:
        version = tracking.register_model(
            model_uri, cfg.register_as, {"dataset": cfg.dataset, "run_id": run_id}
        )
        if cfg.alias:
            tracking.set_alias(cfg.register_as, cfg.alias, version)
        alias = f" as @{cfg.alias}" if cfg.alias else ""
        print(f"registered {cfg.register_as} version {version}{alias}", flush=True)
    print(f"model {model_uri}", flush=True)
    table = tracking.client().download_artifacts(run_id, PER_CLASS_TABLE)
    columns = json.loads(Path(table).read_text())
    per_class = [dict(zip(columns["columns"], row, strict=True)) for row in columns["data"]]
    return TrainOutcome(
        run_id=run_id,
        experiment_id=str(mlflow.get_run(run_id).info.experiment_id),
        model_uri=model_uri,
        test_accuracy=final["test_accuracy"],
        test_macro_f1=final["test_macro_f1"],
        val_accuracy=final["val_accuracy"],
        epochs=int(final["epoch"]),
        wall_seconds=0.0,
        registered_version=version,
        per_class=per_class,
    )
