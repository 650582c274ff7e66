"""Which registered model the settings mean, resolved through ``app.model_registry``."""

from __future__ import annotations

from mlflow.exceptions import MlflowException

from app import model_registry
from app.serving.settings import ModelSettings


def settings_uri(settings: ModelSettings) -> str:
    """The model URI the settings name: a pinned run id wins over a pinned version, which wins
    over the alias."""
    name = settings.model_name
    if settings.model_run_id:
        return model_registry.run_model_uri(settings.model_run_id)
    if settings.model_version:
        return f"models:/{name}/{settings.model_version}"
    return f"models:/{name}@{settings.model_alias}"


def resolve_source(settings: ModelSettings) -> model_registry.ModelRef:
    """Ask the registry what the settings point at right now (blocking: MLflow calls). A pinned
    run reports the newest version registered from it under ``model_name``."""
    return model_registry.resolve_model_uri(
        settings_uri(settings), registered_as=settings.model_name
    )


def not_there_yet(settings: ModelSettings, exc: BaseException) -> bool:
    """Whether ``exc`` says that the alias the settings follow does not exist yet (its model was
    never registered, or nothing was promoted to it): a first deploy before any promotion. A
    pinned version or run that does not exist is a mistake, not a state to wait in."""
    if settings.model_run_id or settings.model_version or not isinstance(exc, MlflowException):
        return False
    no_model = exc.error_code == "RESOURCE_DOES_NOT_EXIST"
    no_alias = exc.error_code == "INVALID_PARAMETER_VALUE" and "alias" in str(exc)
    return no_model or no_alias
