"""MLflow: where runs go, batched metric logging, model logging, registry and loading.

Location: ``MLFLOW_TRACKING_URI``; with none set, a SQLite database (registry included) at
``./mlflow.db`` with artifacts in ``./mlartifacts``, resolved to absolute paths so Ray workers
with another working directory write to the same place.
"""

from __future__ import annotations

import getpass
import os
import re

# Only `git rev-parse HEAD`, with fixed arguments.
import subprocess  # nosec B404
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from app.inference import SPEC_FILE, WEIGHTS_FILE, Predictor, save_model_files
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
    # Only the tracking URI: the registry follows it. A process-wide registry URI would also
    # redirect every other MlflowClient in the process that names only its tracking server.
    mlflow.set_tracking_uri(uri)
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
        # A fixed command with no user input.
        out = subprocess.run(  # nosec B603 B607
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
        classifier = Predictor.from_folder(folder)
        output = pyfunc_model.ImageClassifierModel()
        output.classifier = classifier
        signature = infer_signature(example, output.predict(None, example))
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


# ---------------------------------------------------------------------------------------------
# Registry: aliases, resolution, lineage


@dataclass(frozen=True)
class ModelRef:
    """What a model URI points at."""

    uri: str
    run_id: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    stage: str | None = None


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<ref>[^/]+))$")
_RUNS_URI = re.compile(r"^runs:/(?P<run_id>[0-9a-fA-F]{32})/(?P<path>.+)$")


def resolve_model_uri(uri: str) -> ModelRef:
    """``runs:/<id>/model``, ``models:/<name>@<alias>``, ``models:/<name>/<version>``, or the
    deprecated ``models:/<name>/<stage>`` (a DeprecationWarning), to the version and run."""
    mlflow_client = client()
    if match := _RUNS_URI.match(uri):
        return ModelRef(uri, match["run_id"])
    match = _MODELS_URI.match(uri)
    if match is None:
        raise ValueError(
            f"unsupported model URI {uri!r}: use runs:/<run_id>/model, models:/<name>@<alias>, "
            "models:/<name>/<version>"
        )
    name = match["name"]
    if match["alias"]:
        found = mlflow_client.get_model_version_by_alias(name, match["alias"])
        return ModelRef(uri, found.run_id or "", name, str(found.version), alias=match["alias"])
    ref = match["ref"]
    if ref.isdigit():
        found = mlflow_client.get_model_version(name, ref)
        return ModelRef(uri, found.run_id or "", name, str(found.version))
    warnings.warn(
        f"{uri}: registry stages are deprecated in MLflow; use an alias "
        f"(models:/{name}@champion) instead",
        DeprecationWarning,
        stacklevel=2,
    )
    latest = mlflow_client.get_latest_versions(name, stages=[ref])
    if not latest:
        raise ValueError(f"no version of {name!r} is in stage {ref!r}")
    return ModelRef(uri, latest[0].run_id, name, str(latest[0].version), stage=ref)


def alias_version(name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the alias (or the model) is not set."""
    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def set_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, version)


def delete_alias(name: str, alias: str) -> None:
    client().delete_registered_model_alias(name, alias)


def current_user() -> str:
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def move_alias(name: str, alias: str, version: str, record: Mapping[str, Any]) -> str | None:
    """Point ``alias`` at ``version`` and record the move on that version (previous version,
    time, user, and whatever ``record`` adds: metrics, a forced promotion's reason). Returns
    the previous version."""
    previous = alias_version(name, alias)
    set_alias(name, alias, version)
    tags = {
        "previous_version": previous or "",
        "moved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "moved_by": current_user(),
        **record,
    }
    for key, value in tags.items():
        client().set_model_version_tag(name, version, f"{alias}.{key}", str(value))
    return previous


def list_versions(name: str) -> list[dict[str, Any]]:
    """Every version of a model with its aliases, source run and that run's test metrics."""
    mlflow_client = client()
    aliases: dict[str, list[str]] = {}
    for alias, version in mlflow_client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    out = []
    for found in mlflow_client.search_model_versions(f"name = '{name}'"):
        metrics = mlflow_client.get_run(found.run_id).data.metrics if found.run_id else {}
        out.append(
            {
                "version": str(found.version),
                "run_id": found.run_id,
                "aliases": aliases.get(str(found.version), []),
                "test_accuracy": metrics.get("test_accuracy"),
                "test_macro_f1": metrics.get("test_macro_f1"),
                "created": found.creation_timestamp,
            }
        )
    return sorted(out, key=lambda v: int(v["version"]))


def lineage(ref: ModelRef) -> dict[str, Any]:
    """From a model to its training run, its sweep (parent run), data and code."""
    run = client().get_run(ref.run_id)
    tags = run.data.tags
    return {
        "model": ref.name,
        "version": ref.version,
        "training_run_id": ref.run_id,
        "experiment_id": run.info.experiment_id,
        "sweep_run_id": tags.get("mlflow.parentRunId"),
        "dataset": tags.get("dataset"),
        "dataset_fingerprint": tags.get("dataset_fingerprint"),
        "git_commit": tags.get("git_commit"),
        "ray_job_id": tags.get("ray_job_id"),
    }


def load_predictor(model_uri: str, device: str = "cpu") -> Predictor:
    """Load any model URI (runs:/, models:/name@alias, models:/name/version) for inference,
    rebuilding the network from our code and the safetensors weights: nothing is unpickled."""
    configure()
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        return Predictor.from_folder(local / "artifacts", device)
