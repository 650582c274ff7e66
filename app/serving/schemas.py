"""What the HTTP API answers, as pydantic models (they make ``/docs``), and how its request
bodies look in OpenAPI."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Query
from pydantic import BaseModel, ConfigDict


class ClassProbability(BaseModel):
    label: str
    class_index: int
    probability: float


class ModelIdentity(BaseModel):
    """Which registered model answered."""

    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: str | None
    alias: str | None


class Prediction(BaseModel):
    label: str
    class_index: int
    confidence: float
    top_k: list[ClassProbability]
    model: ModelIdentity


class BatchPrediction(BaseModel):
    predictions: list[Prediction]


# ready: serving what the settings name; degraded: switching to it failed and an older model
# (or one the registry cannot confirm) keeps answering; waiting: nothing is promoted to the
# alias yet (a first deploy), every answer is 503. Why is in the replica's log.
Status = Literal["ready", "degraded", "waiting"]


class Lineage(BaseModel):
    """What the model was made from: its training run, the sweep that chose it, the data's
    digest, the code's commit, and what the run cost (None where the run did not record it)."""

    training_run_id: str | None
    sweep: str | None
    sweep_run_id: str | None
    dataset: str | None
    dataset_digest: str | None
    git_commit: str | None
    git_dirty: str | None
    ray_job_id: str | None
    cost_usd: float | None


class ModelInfo(ModelIdentity):
    """What a client needs to call the model, and its lineage. Where it is stored, its metrics
    and errors are the operators': in the replica's log and metrics."""

    status: Status
    dataset: str
    classes: list[str]
    input_shape: list[int]
    loaded_at: str
    lineage: Lineage


class Health(BaseModel):
    status: Status
    model: ModelIdentity


class ErrorBody(BaseModel):
    error: str
    status: int
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "empty body, malformed multipart, missing file",
        408: "the body arrived too slowly",
        413: "too many bytes, pixels or files",
        415: "not a PNG, JPEG, WebP or BMP image",
        422: "truncated or corrupt image, invalid parameter",
        503: "overloaded or no model loaded: retry later",
    }.items()
}
_BINARY = {"type": "string", "format": "binary"}
RAW_OR_MULTIPART = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": _BINARY},
            "image/*": {"schema": _BINARY},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": _BINARY},
                    "required": ["file"],
                }
            },
        },
    }
}
MULTIPART_FILES = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": _BINARY}},
                    "required": ["files"],
                }
            }
        },
    }
}
TOP_K = Query(3, ge=1, le=1000, description="how many classes to rank (capped at all of them)")
