"""MLflow: where runs go, batched metric logging, model logging, registry and loading.

Location: ``MLFLOW_TRACKING_URI``; with none set, a SQLite database (registry included) at
``./mlflow.db`` with artifacts in ``./mlartifacts``, resolved to absolute paths so Ray workers
with another working directory write to the same place.
"""

from __future__ import annotations

import os
import subprocess  # nosec B404 - only `git rev-parse`, fixed arguments
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from app.inference import SPEC_FILE, WEIGHTS_FILE, Classifier, save_model_files
from app.models import ModelSpec

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
MODEL_ARTIFACT_PATH = "model"
# MLflow's REST limits per log_batch request.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
# Environment a Ray worker needs to reach the same MLflow server as the driver.
FORWARDED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)


def tracking_uri() -> str:
    """The tracking URI every job uses, absolute for local stores."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        return f"sqlite:///{Path.cwd() / DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def configure() -> str:
    """Point this process's MLflow client at the tracking URI; return it."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def worker_env() -> dict[str, str]:
    """MLflow settings for Ray workers (the tracking URI made absolute)."""
    env = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    env["MLFLOW_TRACKING_URI"] = tracking_uri()
    return env


def client() -> MlflowClient:
    uri = configure()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(name: str) -> str:
    """The experiment's id, creating it when missing. For a local SQLite store the artifacts go
    next to the database, not under whatever directory the creating process ran in."""
    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    uri = tracking_uri()
    location = None
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        location = (db.parent / DEFAULT_ARTIFACTS).as_uri()
    try:
        return str(mlflow_client.create_experiment(name, artifact_location=location))
    except mlflow.exceptions.MlflowException:
        # Another process (a concurrent trial) created it between our lookup and create.
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def git_commit() -> str | None:
    """The code's commit, from git or (in a cluster image without .git) the GIT_COMMIT env."""
    try:
        out = subprocess.run(  # nosec B603 B607 - fixed command, no user input
            ["git", "rev-parse", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("GIT_COMMIT")
    return out.stdout.strip() or None


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = "" if value is None else str(value)
    return flat


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def start_run(
    experiment: str,
    run_name: str | None,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
) -> str:
    """Create a run with its params and tags in a few batched requests; return its id."""
    mlflow_client = client()
    all_tags = {k: v for k, v in tags.items() if v is not None}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = mlflow_client.create_run(ensure_experiment(experiment), run_name=run_name, tags=all_tags)
    param_list = [Param(k, v[:6000]) for k, v in flatten(params).items()]
    for chunk in _chunks(param_list, MAX_PARAMS_PER_BATCH):
        mlflow_client.log_batch(run.info.run_id, params=chunk)
    return str(run.info.run_id)


class MetricBuffer:
    """Collects metrics and sends them with ``log_batch``: one request per flush, not one per
    metric, so logging every N batches costs training nothing measurable."""

    def __init__(self, run_id: str, mlflow_client: MlflowClient | None = None) -> None:
        self.run_id = run_id
        self.client = mlflow_client or client()
        self.pending: list[Metric] = []

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if len(self.pending) >= MAX_METRICS_PER_BATCH:
            self.flush()

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for chunk in _chunks(pending, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)


def set_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def pip_requirements() -> list[str]:
    """What the pyfunc model needs, pinned to this environment's versions."""
    from importlib.metadata import version

    packages = ("torch", "torchvision", "safetensors", "numpy", "pandas", "mlflow")
    return [f"{name}=={version(name).split('+')[0]}" for name in packages]


def log_model(run_id: str, state: dict[str, Any], spec: ModelSpec, example: np.ndarray) -> str:
    """Log the classifier as an MLflow pyfunc "model from code" (weights as safetensors, the
    spec as JSON, the code of ``app``); return the model URI (``runs:/<run_id>/model``)."""
    from mlflow.models import infer_signature

    import app
    from app import pyfunc_model

    app_dir = Path(app.__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model_files(state, spec, Path(tmp))
        classifier = Classifier.from_folder(folder)
        output = pyfunc_model.ImageClassifierModel()
        output.classifier = classifier
        signature = infer_signature(example, output.predict(None, example))  # type: ignore[arg-type]
        with mlflow.start_run(run_id=run_id):
            mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT_PATH,
                python_model=str(Path(pyfunc_model.__file__)),
                artifacts={"weights": str(folder / WEIGHTS_FILE), "spec": str(folder / SPEC_FILE)},
                code_paths=[str(app_dir)],
                signature=signature,
                input_example=example,
                pip_requirements=pip_requirements(),
            )
    return f"runs:/{run_id}/{MODEL_ARTIFACT_PATH}"


def register_model(model_uri: str, name: str, tags: Mapping[str, str] | None = None) -> str:
    """Register ``model_uri`` as a new version of ``name``; return the version number."""
    version = mlflow.register_model(model_uri, name, tags=dict(tags or {}))
    return str(version.version)


def set_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, version)


def load_classifier(model_uri: str, device: str = "cpu") -> Classifier:
    """Load any model URI (runs:/, models:/name@alias, models:/name/version) for inference,
    rebuilding the network from our code and the safetensors weights: nothing is unpickled."""
    configure()
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        return Classifier.from_folder(local / "artifacts", device)
