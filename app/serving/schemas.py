"""What the HTTP API answers, as pydantic models (they make ``/docs``), and how its request
bodies look in OpenAPI."""

from __future__ import annotations

from typing import Any

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


class ModelInfo(ModelIdentity):
    run_id: str
    model_uri: str
    metrics: dict[str, float]
    loaded_at: str
    device: str
    precision: str
    architecture: str
    dataset: str
    classes: list[str]
    input_shape: list[int]
    poll_interval_s: float
    max_batch_size: int
    batch_wait_timeout_s: float
    last_error: str | None


class Health(BaseModel):
    status: str
    model: ModelIdentity


class ErrorBody(BaseModel):
    error: str
    status: int
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "empty body, malformed multipart, missing file",
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
