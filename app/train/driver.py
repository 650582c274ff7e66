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
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from torch import nn

from app import model_registry, tracking
from app.code_version import code_version
from app.cost.prices import price_table
from app.cost.record import record_run_cost
from app.cost.usage import held_here, held_tag
from app.dataset_lineage import log_dataset
from app.datasets import ImageSplits, load_splits
from app.evaluation import PER_CLASS_TABLE, evaluate_model, log_evaluation
from app.models import ModelSpec, cpu_state_dict
from app.ray_runtime import ensure_ray, ray_job_id
from app.train.config import TrainConfig
from app.train.context import RayWorkerContext
from app.train.loop import train_worker
from app.train.system_metrics import node_system_metrics

RAY_RUN_NAME_TAG = "ray_run_name"
EVALUATION_DIR = "evaluation"  # where a training run keeps its test-split figures and table


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
    cost: dict[str, Any] = field(default_factory=dict)  # app.cost.usage.RunCost's figures

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _worker_entry(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray

    cfg = TrainConfig.model_validate(loop_config["config"])
    splits: ImageSplits = ray.get(loop_config["data"])
    ctx = RayWorkerContext()
    run_id = loop_config["run_id"]
    # Which node this worker holds its share of, for the run's cost (app.cost.usage).
    held = held_here(cfg.cpus_per_worker, 1 if cfg.use_gpu else 0)
    tracking.retrying(
        lambda: tracking.set_tags(run_id, held_tag(f"worker{ctx.rank}", held)),
        "recording the worker's node",
    )
    with node_system_metrics(run_id):
        if ctx.rank == 0:
            # A restarted worker group repeats the epoch its predecessor may have logged but
            # not checkpointed: what the run holds already is not logged again.
            sink = tracking.MetricBuffer(
                run_id, sent_through_step=tracking.last_logged_step(run_id, "epoch")
            )
            final = functools.partial(evaluate_and_log_model, cfg, splits, run_id, sink)
            train_worker(cfg, splits, ctx, sink, final_step=final)
        else:
            train_worker(cfg, splits, ctx)


def evaluate_and_log_model(
    cfg: TrainConfig,
    splits: ImageSplits,
    run_id: str,
    sink: tracking.MetricBuffer,
    model: nn.Module,
    history: list[dict[str, float]],
    global_step: int,
) -> dict[str, float]:
    """After the last epoch (rank 0): test metrics, per-class table, figures, the model. Each
    write is tried again through a tracking outage (``tracking.retrying``), and ``sink``'s
    metrics still queued from an outage are sent first."""
    spec = ModelSpec.for_dataset(cfg.model, splits.info)
    model = model.to("cpu")  # scored, plotted and saved on CPU: any server can load it
    report, probabilities = evaluate_model(model, splits.x_test, splits.y_test, splits.info)
    test_metrics = {"test_accuracy": report.accuracy, "test_macro_f1": report.macro_f1}
    sink.log(test_metrics, step=global_step, repeat=True)
    sink.drain()
    tracking.retrying(
        lambda: log_evaluation(
            tracking.client(),
            run_id,
            report,
            probabilities,
            splits.x_test,
            splits.y_test,
            spec.classes,
            artifact_path=EVALUATION_DIR,
            history=history,
        ),
        "logging the evaluation",
    )
    example = splits.x_test[:4].permute(0, 2, 3, 1).squeeze(-1).numpy()
    state = cpu_state_dict(model)
    tracking.retrying(
        lambda: model_registry.log_model(run_id, state, spec, example), "logging the model"
    )
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


SKIPPED_FILES_ARTIFACT = "skipped_files.txt"
SKIPPED_FILES_LOGGED = 10_000  # a longer list is only counted


def log_skipped_files(run_id: str, skipped: Sequence[str]) -> None:
    """image-folder: the count of files not loaded as a metric, their list as an artifact."""
    tracking.client().log_metric(run_id, "dataset_skipped_files", len(skipped))
    if skipped and len(skipped) <= SKIPPED_FILES_LOGGED:
        text = "\n".join(skipped) + "\n"
        tracking.client().log_text(run_id, text, SKIPPED_FILES_ARTIFACT)


def _open_run(
    cfg: TrainConfig,
    splits: ImageSplits,
    run_name: str,
    earlier: Run | None,
    parent_run_id: str | None,
    extra_tags: dict[str, str] | None,
) -> str:
    """A new MLflow run for this training, or the run of the earlier attempt it resumes."""
    if earlier is not None:
        print(f"resuming MLflow run {earlier.info.run_id} (ray run {run_name})", flush=True)
        return str(earlier.info.run_id)
    tags = {
        "dataset": cfg.dataset,
        "model": cfg.model,
        "dataset_fingerprint": splits.fingerprint,
        **code_version().tags(),
        "ray_job_id": ray_job_id() or "",
        RAY_RUN_NAME_TAG: run_name,
        **(extra_tags or {}),
    }
    run_id = tracking.start_run(
        cfg.experiment, run_name, cfg.model_dump(mode="json"), tags, parent_run_id
    )
    log_dataset(run_id, cfg.dataset, splits)
    if splits.source_uri is not None:  # image-folder: what was not loaded, and why
        log_skipped_files(run_id, splits.skipped)
    return run_id


def _trainer(
    cfg: TrainConfig, splits: ImageSplits, run_id: str, run_name: str, callbacks: Sequence[Any]
) -> Any:
    """The Ray Train ``TorchTrainer`` of one training: its workers, storage and retries."""
    import ray

    # Train V2's classes (the V1 names in ray.train are the same objects when V2 is on).
    from ray.train.v2.api.config import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.torch.torch_trainer import TorchTrainer

    return TorchTrainer(
        _worker_entry,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "data": ray.put(splits),
            "run_id": run_id,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker} | ({"GPU": 1} if cfg.use_gpu else {}),
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=cfg.storage_path,
            failure_config=FailureConfig(
                max_failures=cfg.max_failures,
                max_preemption_failures=cfg.max_preemption_failures,
            ),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
            worker_runtime_env={"env_vars": tracking.worker_env()},
        ),
    )


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
    scheduler's stop also surfaces here as an error, and the sweep decides the status.

    Every tracking call outlasts an outage of the server (``tracking.outlasting_outages``):
    a training is not lost to an MLflow restart at its start or its end."""
    with tracking.outlasting_outages():
        return _fit(cfg, splits, parent_run_id, callbacks, extra_tags, close_run_on_error)


def _fit(
    cfg: TrainConfig,
    splits: ImageSplits | None,
    parent_run_id: str | None,
    callbacks: Sequence[Any],
    extra_tags: dict[str, str] | None,
    close_run_on_error: bool,
) -> TrainOutcome:
    started = time.perf_counter()
    tracking.configure()
    run_name = cfg.run_name or f"{cfg.dataset}-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    earlier = _find_resumable_run(cfg)
    if earlier is not None and earlier.info.status == "FINISHED":
        # A resumed sweep restarts trials that finished just as its driver died, a scheduled
        # job is resubmitted after it finished: no retraining, no second registered version.
        print(f"ray run {run_name} already finished as MLflow run {earlier.info.run_id}")
        return _outcome(cfg, earlier.info.run_id, earlier.data.metrics)
    # Before any run is created or Ray started: a missing dataset fails at once.
    folder = cfg.image_folder_source()  # --dataset image-folder
    splits = splits or load_splits(
        cfg.dataset, cfg.data_dir, cfg.download, cfg.val_fraction, cfg.seed, folder
    )
    price_table()  # a malformed price table or local rate fails here, before any work
    ensure_ray()
    run_id = _open_run(cfg, splits, run_name, earlier, parent_run_id, extra_tags)
    print(f"MLflow run {run_id} at {tracking.tracking_uri()}", flush=True)
    try:
        result = _trainer(cfg, splits, run_id, run_name, callbacks).fit()
        if not result.metrics or "test_accuracy" not in result.metrics:
            raise RuntimeError(f"training ended without its final report: {result.error}")
        outcome = _outcome(cfg, run_id, result.metrics)
    except BaseException:
        if close_run_on_error:
            record_run_cost(run_id)
            tracking.client().set_terminated(run_id, status="FAILED")
        raise
    outcome.wall_seconds = time.perf_counter() - started
    tracking.client().log_metric(run_id, "wall_seconds", outcome.wall_seconds)
    cost = record_run_cost(run_id)
    if cost is not None:
        outcome.cost = {**cost.metrics(), **cost.tags()}
        print(f"cost {cost.describe()}", flush=True)
    tracking.client().set_terminated(run_id, status="FINISHED")
    return outcome


def _outcome(cfg: TrainConfig, run_id: str, final: dict[str, Any]) -> TrainOutcome:
    """Driver side, after training: register the logged model, collect the summary."""
    version = None
    if cfg.register_as:
        tags = {"dataset": cfg.dataset, "run_id": run_id}
        version, _ = model_registry.register_once(run_id, cfg.register_as, tags, cfg.alias)
    model_uri = model_registry.run_model_uri(run_id)
    print(f"model {model_uri}", flush=True)
    table = tracking.client().download_artifacts(run_id, f"{EVALUATION_DIR}/{PER_CLASS_TABLE}")
    columns = json.loads(Path(table).read_text())
    per_class = [dict(zip(columns["columns"], row, strict=True)) for row in columns["data"]]
    return TrainOutcome(
        run_id=run_id,
        experiment_id=str(tracking.client().get_run(run_id).info.experiment_id),
        model_uri=model_uri,
        test_accuracy=final["test_accuracy"],
        test_macro_f1=final["test_macro_f1"],
        val_accuracy=final["val_accuracy"],
        epochs=int(final["epoch"]),
        wall_seconds=0.0,
        registered_version=version,
        per_class=per_class,
    )
