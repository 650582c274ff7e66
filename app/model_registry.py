"""MLflow models: logging a classifier, the registry (versions, aliases, resolution of model
URIs, lineage) and loading a model for inference without unpickling anything."""

from __future__ import annotations

import getpass
import os
import re
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Run

from app.inference import SPEC_FILE, WEIGHTS_FILE, Predictor, save_model_files
from app.models import ModelSpec
from app.tracking import client, configure, is_outage

MODEL_ARTIFACT_PATH = "model"


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
    return run_model_uri(run_id)


def run_model_uri(run_id: str) -> str:
    """Where a run's logged model lives: ``runs:/<run_id>/model``."""
    return f"runs:/{run_id}/{MODEL_ARTIFACT_PATH}"


def register_version(
    run_id: str, name: str, tags: Mapping[str, str], alias: str | None = None
) -> str:
    """Register the run's model as a new version of ``name`` and point ``alias`` at it, when
    given; return the version number."""
    version = str(mlflow.register_model(run_model_uri(run_id), name, tags=dict(tags)).version)
    if alias:
        set_alias(name, alias, version)
    print(f"registered {name} version {version}" + (f" as @{alias}" if alias else ""), flush=True)
    return version


def register_once(
    run_id: str, name: str, tags: Mapping[str, str], alias: str | None = None
) -> tuple[str, bool]:
    """``register_version``, unless ``name`` already has a version from this run (a resumed
    run that had already finished, a resubmitted scheduled job): then that version, and the
    alias is left where it is (it may have moved on since). Returns (version, registered now)."""
    existing = newest_run_version(name, run_id)
    if existing is not None:
        print(f"{name} version {existing} is already this run's: nothing registered", flush=True)
        return existing, False
    return register_version(run_id, name, tags, alias), True


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

    @property
    def pinned_uri(self) -> str:
        """The URI of exactly this version: ``models:/<name>/<version>`` for a registry URI (an
        alias that moves while the model downloads cannot change what loads), else ``uri``."""
        if self.uri.startswith("models:/") and self.name and self.version:
            return f"models:/{self.name}/{self.version}"
        return self.uri

    def same_model(self, other: ModelRef) -> bool:
        """The same registered version of the same run, however it was reached."""
        return (self.name, self.version, self.run_id) == (other.name, other.version, other.run_id)


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<ref>[^/]+))$")
_RUNS_URI = re.compile(r"^runs:/(?P<run_id>[0-9a-fA-F]{32})/(?P<path>.+)$")


def newest_run_version(name: str, run_id: str) -> str | None:
    """The newest version of ``name`` registered from ``run_id``; None when there is none."""
    found = client().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    newest = max((int(v.version) for v in found), default=None)
    return None if newest is None else str(newest)


def resolve_model_uri(uri: str, registered_as: str | None = None) -> ModelRef:
    """``runs:/<id>/model``, ``models:/<name>@<alias>``, ``models:/<name>/<version>``, or the
    deprecated ``models:/<name>/<stage>`` (a DeprecationWarning), to the version and run. A run
    URI names no model: with ``registered_as``, the ref carries that name and the run's newest
    version of it (None when the run was never registered under it)."""
    mlflow_client = client()
    if match := _RUNS_URI.match(uri):
        run_id = match["run_id"]
        if registered_as is None:
            return ModelRef(uri, run_id)
        return ModelRef(uri, run_id, registered_as, newest_run_version(registered_as, run_id))
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
    except mlflow.exceptions.MlflowException as exc:
        if is_outage(exc):
            raise  # an unreachable server is not a missing alias
        return None


def set_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, version)


def current_user() -> str:
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


class AliasMovedError(RuntimeError):
    """An alias no longer points where the caller last saw it: someone moved it meanwhile."""


def move_alias(
    name: str,
    alias: str,
    version: str,
    record: Mapping[str, Any],
    expected: Mapping[str, str | None] | None = None,
) -> str | None:
    """Point ``alias`` at ``version`` and record the move on that version (previous version,
    time, user, and whatever ``record`` adds: metrics, a forced promotion's reason). Returns
    the previous version.

    ``expected``: alias -> the version the caller decided on (None: unset); if any of them
    points elsewhere now, nothing moves and ``AliasMovedError`` says which. MLflow has no
    compare-and-set, so the check runs just before the move: it closes the window of an
    evaluation (minutes), not of two requests racing (milliseconds)."""
    for other, seen in (expected or {}).items():
        now = alias_version(name, other)
        if now != seen:
            raise AliasMovedError(
                f"@{other} of {name} moved from version {seen or 'unset'} to "
                f"{now or 'unset'} meanwhile: @{alias} not moved"
            )
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


def lineage(ref: ModelRef, run: Run | None = None) -> dict[str, Any]:
    """From a model to its training run, its sweep (parent run), its data and code, and what
    the run cost: the chain ``/model``, ``evaluate --results-json`` and ``app.lineage`` give."""
    run = run or client().get_run(ref.run_id)
    tags = run.data.tags
    inputs = run.inputs.dataset_inputs if run.inputs else []
    return {
        "model": ref.name,
        "version": ref.version,
        "training_run_id": ref.run_id,
        "experiment_id": run.info.experiment_id,
        "sweep": tags.get("sweep"),
        "sweep_run_id": tags.get("mlflow.parentRunId"),
        "dataset": tags.get("dataset"),
        "dataset_digest": inputs[0].dataset.digest if inputs else None,
        "dataset_fingerprint": tags.get("dataset_fingerprint"),
        "git_commit": tags.get("git_commit"),
        "git_dirty": tags.get("git_dirty"),
        "ray_job_id": tags.get("ray_job_id"),
        "cost_usd": run.data.metrics.get("cost_usd"),
    }


def load_predictor(model_uri: str, device: str = "cpu") -> Predictor:
    """Load any model URI (runs:/, models:/name@alias, models:/name/version) for inference,
    rebuilding the network from our code and the safetensors weights: nothing is unpickled."""
    configure()
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        return Predictor.from_folder(local / "artifacts", device)
