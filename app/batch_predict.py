"""Score folders of images in bulk (the batch-inference job): a registered model over a local
folder, an ``s3://`` prefix or a list file, on a Ray Data actor pool (one GPU per actor where the
cluster has GPUs), to Parquet, recorded as an MLflow run.

Output columns: path, label, class_index, confidence, top_k (list of {label, probability}),
model_name, model_version, error (null for a scored row). A file that cannot be decoded is a
row with its error, counted and listed (``unreadable.txt`` on the run), never a failed job.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from app import batch_predict_io as io
from app import model_registry, tracking
from app.batch_predict_pipeline import (
    ModelFiles,
    Resources,
    ScoringOptions,
    error_table,
    run_pipeline,
    summarize_output,
)
from app.config import Experiment, JobConfig
from app.preprocessing import Limits

PREDICT_EXPERIMENT = "batch-inference"
UNREADABLE_ARTIFACT = "unreadable.txt"
PRINTED_UNREADABLE = 10  # how many unreadable files the console lists (the artifact has all)
RESULTS_UNREADABLE = 100  # and the results JSON


def _location(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("give a local path or an s3:// URI")
    if "://" in value and not value.startswith("s3://"):
        raise ValueError("only local paths and s3://bucket/prefix URIs are supported")
    return value


class PredictConfig(JobConfig):
    model_uri: str = Field(
        description="runs:/<id>/model, models:/<name>@<alias>, models:/<name>/<version>"
    )
    input: str = Field(
        description="a folder (recursive, image files), s3://bucket/prefix, or a .txt list "
        "file of paths / s3:// URIs, one a line"
    )
    output: str = Field(description="folder or s3://bucket/prefix for the Parquet files")
    top_k: int = Field(3, ge=1, le=100, description="classes kept per image, most likely first")
    batch_size: int = Field(256, ge=1, le=8192, description="images per model call")
    experiment: Experiment = PREDICT_EXPERIMENT
    overwrite: bool = Field(False, description="replace what --output already holds")
    max_actors: int | None = Field(
        None, ge=1, description="actors in the pool (default: one per GPU, else one per CPU)"
    )

    @field_validator("model_uri")
    @classmethod
    def _model_uri(cls, value: str) -> str:
        value = value.strip()
        if not value.startswith(("runs:/", "models:/")):
            raise ValueError("use runs:/<run_id>/model, models:/<name>@<alias> or /<version>")
        return value

    @field_validator("input", "output")
    @classmethod
    def _locations(cls, value: str) -> str:
        return _location(value)


def _check_tracking_server() -> None:
    """Fail in seconds, with one line, when the tracking server does not answer at all (the
    MLflow client would retry for minutes first). Any HTTP answer counts as reachable."""
    import requests
    from mlflow.exceptions import MlflowException

    uri = tracking.configure()
    if not uri.startswith(("http://", "https://")):
        return
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=10)
    except requests.RequestException as exc:
        reason = type(exc).__name__
        raise MlflowException(f"MLflow tracking server {uri} is unreachable ({reason})") from exc


def _download_model(ref: model_registry.ModelRef) -> ModelFiles:
    """The model's weights and spec, downloaded once (the exact version, not the alias)."""
    import mlflow

    tracking.configure()
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=ref.pinned_uri, dst_path=tmp)
        return ModelFiles.from_folder(Path(local) / "artifacts")


def _open_run(cfg: PredictConfig, ref: model_registry.ModelRef, images: int) -> str:
    params = {
        "model_uri": cfg.model_uri,
        "model_version": ref.version or "",
        "input": cfg.input,
        "output": cfg.output,
        "images": images,
        "top_k": cfg.top_k,
        "batch_size": cfg.batch_size,
    }
    tags = {
        "model_name": ref.name or "",
        "model_version": ref.version or "",
        "source_run_id": ref.run_id,
        "model_uri": cfg.model_uri,
    }
    name = f"predict-{ref.name or ref.run_id}-{ref.version or ''}".rstrip("-")
    return tracking.start_run(cfg.experiment, name, params, tags)


def _log_outcome(run_id: str, metrics: dict[str, float], unreadable: list[tuple[str, str]]) -> None:
    buffer = tracking.MetricBuffer(run_id)
    buffer.log(metrics, step=0)
    buffer.drain()
    mlflow_client = tracking.client()
    if unreadable:
        text = "".join(f"{path}\t{error}\n" for path, error in unreadable)
        mlflow_client.log_text(run_id, text, UNREADABLE_ARTIFACT)
    mlflow_client.set_terminated(run_id)


def _print_summary(results: dict[str, Any], unreadable: list[tuple[str, str]]) -> None:
    for path, error in unreadable[:PRINTED_UNREADABLE]:
        print(f"unreadable: {path}: {error}")
    if len(unreadable) > PRINTED_UNREADABLE:
        print(
            f"... and {len(unreadable) - PRINTED_UNREADABLE} more (run artifact "
            f"{UNREADABLE_ARTIFACT})"
        )
    print(
        f"scored {results['images_scored']} of {results['images']} images "
        f"({results['images_unreadable']} unreadable) in {results['wall_seconds']:.1f} s, "
        f"{results['images_per_sec']:.1f} images/s on {results['actors']} {results['device']} "
        f"actor(s) with {results['model_name'] or results['model_uri']} "
        f"v{results['model_version'] or '-'} -> {results['output']} "
        f"(MLflow run {results['run_id']})",
        flush=True,
    )


def predict(cfg: PredictConfig) -> dict[str, Any]:
    """List the inputs, resolve and download the model, score on Ray, write and record."""
    from app.ray_runtime import ensure_ray

    started = time.monotonic()
    limits = Limits()
    # Everything that can be refused is checked before the model or Ray is touched.
    out_fs, out_path, existing = io.check_output(cfg.output, cfg.overwrite)
    inputs = io.list_inputs(cfg.input, limits.max_bytes)
    _check_tracking_server()
    ref = model_registry.resolve_model_uri(cfg.model_uri)
    model = _download_model(ref)
    spec = model.predictor().spec  # loads here once: a bad model fails before any Ray work
    options = ScoringOptions(cfg.top_k, ref.name, ref.version, inputs.scheme, limits)
    not_read = [(path, "not_found: no such file") for path in inputs.missing] + [
        (path, f"too_large: {size} bytes; the limit is {limits.max_bytes} bytes")
        for path, size in inputs.oversized
    ]
    run_id = _open_run(cfg, ref, inputs.total)
    try:
        if existing:
            out_fs.delete_dir_contents(out_path)  # --overwrite, now that the job can run
        ensure_ray()
        resources = Resources.of_cluster(cfg.max_actors)
        print(
            f"scoring {inputs.total} images from {cfg.input} with {cfg.model_uri} "
            f"(version {ref.version or '-'}, {len(spec.classes)} classes) on "
            f"{resources.actors} {resources.device} actor(s)",
            flush=True,
        )
        pipeline_started = time.monotonic()
        run_pipeline(
            inputs.filesystem,
            inputs.paths,
            error_table(not_read, options) if not_read else None,
            model,
            options,
            out_fs,
            out_path,
            cfg.batch_size,
            resources,
        )
        pipeline_seconds = time.monotonic() - pipeline_started
        summary = summarize_output(out_fs, out_path)
    except BaseException:
        tracking.client().set_terminated(run_id, "FAILED")
        raise
    wall = time.monotonic() - started
    metrics = {
        "images_scored": summary.scored,
        "images_unreadable": len(summary.unreadable),
        "images_per_sec": summary.rows / max(pipeline_seconds, 1e-9),
        "wall_seconds": wall,
        "pipeline_seconds": pipeline_seconds,
    }
    _log_outcome(run_id, metrics, summary.unreadable)
    results: dict[str, Any] = {
        "run_id": run_id,
        "model_uri": cfg.model_uri,
        "model_name": ref.name,
        "model_version": ref.version,
        "source_run_id": ref.run_id,
        "input": cfg.input,
        "output": cfg.output,
        "images": summary.rows,
        **metrics,
        "unreadable": [{"path": path, "error": error} for path, error in summary.unreadable][
            :RESULTS_UNREADABLE
        ],
        "device": resources.device,
        "actors": resources.actors,
    }
    _print_summary(results, summary.unreadable)
    return results


def run_predict_job(cfg: PredictConfig) -> dict[str, Any]:
    return predict(cfg)
