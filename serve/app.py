"""HTTP inference on Ray Serve for the model an MLflow alias points at.

Two deployments (``serve run --working-dir . serve/config.yaml``, or ``serve deploy`` where the
image carries the code):

- ``ClassifierAPI``, the FastAPI ingress: reads bounded bodies (raw bytes or multipart), decodes
  them with ``app.preprocessing`` and answers every bad input with a 4xx JSON error. It groups
  the decoded images of concurrent requests with ``@serve.batch`` and sends the Classifier one
  call per batch: the hop between the deployments is paid per batch, not per image.
- ``Classifier``: the model from ``models:/<name>@<alias>`` loaded through
  ``app.tracking.load_predictor`` on the replica's device (CUDA with float16 batches when it
  has a GPU), one forward pass per batch. A background task follows the alias every
  ``poll_interval_s``: a new version is loaded and self-tested beside the old one, then one
  reference assignment swaps them, so no request fails during a promotion.

Routes: ``POST /predict``, ``POST /predict/batch``, ``GET /model``, ``GET /health``, ``/docs``.

No ``from __future__ import annotations`` here: FastAPI must resolve the route signatures of
the class-based views Serve builds, and string annotations there stay unresolved.
"""

import asyncio
import functools
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncGenerator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.deployment import Deployment
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter as MetricCounter
from ray.serve.metrics import Gauge, Histogram
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import tracking
from app.config import ALIAS_PATTERN, MODEL_NAME_PATTERN
from app.inference import Predictor
from app.preprocessing import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, InputError, Limits
from app.preprocessing import to_model_input as decode
from app.devices import pick_device

logger = logging.getLogger("ray.serve")

# Environment variables that override the classifier's user_config (non-empty values only).
ENV_OVERRIDES = {
    "MODEL_NAME": "model_name",
    "MODEL_ALIAS": "model_alias",
    "MODEL_VERSION": "model_version",
    "MODEL_RUN_ID": "model_run_id",
}
# Room for multipart boundaries and part headers around one image.
MULTIPART_SLACK = 64 * 1024
# Bodies above this are decoded in a worker thread so a large photo never stalls the event loop;
# small ones (every digit) decode faster inline than a thread hop costs.
INLINE_DECODE_BYTES = 64 * 1024
# A swap can change the input shape between decoding and the forward pass; decode again.
INPUT_SHAPE_RETRIES = 3
# Dynamic batching: a batch runs when full or this long after its first request. Waiting longer
# forms bigger batches under load (more throughput, lower latency there) and costs an idle
# request up to the wait: benchmarks/serve_load.py measures both.
MAX_BATCH_SIZE = 16
BATCH_WAIT_TIMEOUT_S = 0.02
# Batches one ingress replica has in flight to the Classifier: one in each replica's forward
# pass (autoscaling allows two) and one more each crossing the hop meanwhile.
MAX_CONCURRENT_BATCHES = 4


# ---------------------------------------------------------------------------------------------
# Configuration (user_config of each deployment)


class ModelSettings(BaseModel):
    """What the ``Classifier`` serves. A pinned run id wins over a pinned version, which wins
    over the alias."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_name: str = Field(default="digits-classifier", pattern=MODEL_NAME_PATTERN)
    model_alias: str = Field(default="champion", pattern=ALIAS_PATTERN)
    model_version: int | None = Field(default=None, ge=1)
    model_run_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    poll_interval_s: float = Field(default=10.0, gt=0, le=3600)

    @classmethod
    def from_sources(
        cls, user_config: Mapping[str, Any], env: Mapping[str, str]
    ) -> "ModelSettings":
        values = dict(user_config)
        values.update({field: env[name] for name, field in ENV_OVERRIDES.items() if env.get(name)})
        return cls.model_validate(values)


class ApiSettings(BaseModel):
    """Bounds on every request the ingress accepts, and how it batches images for the model."""

    model_config = ConfigDict(extra="forbid")

    max_image_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1024, le=256 * 1024 * 1024)
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1, le=DEFAULT_MAX_PIXELS * 4)
    max_batch_images: int = Field(default=32, ge=1, le=1024)
    max_batch_bytes: int = Field(default=32 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    max_batch_size: int = Field(default=MAX_BATCH_SIZE, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(default=BATCH_WAIT_TIMEOUT_S, ge=0, le=1)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_image_bytes, self.max_pixels)


# ---------------------------------------------------------------------------------------------
# The served model


@dataclass(frozen=True)
class ModelSource:
    """One registered model, resolved: what the alias (or a pin) points at right now."""

    name: str
    version: str | None
    alias: str | None
    run_id: str
    uri: str

    def same_model(self, other: "ModelSource") -> bool:
        return (self.name, self.version, self.run_id) == (other.name, other.version, other.run_id)


def resolve_source(settings: ModelSettings) -> ModelSource:
    """Ask the registry which model the settings mean (blocking: MLflow calls)."""
    client = tracking.client()
    name = settings.model_name
    if settings.model_run_id:
        run_id = settings.model_run_id
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        newest = max((int(v.version) for v in versions), default=None)
        version = None if newest is None else str(newest)
        return ModelSource(
            name, version, None, run_id, f"runs:/{run_id}/{tracking.MODEL_ARTIFACT_PATH}"
        )
    if settings.model_version:
        found = client.get_model_version(name, str(settings.model_version))
        alias = None
    else:
        found = client.get_model_version_by_alias(name, settings.model_alias)
        alias = settings.model_alias
    # Load the version itself, not the alias: it may move while we download.
    return ModelSource(
        name, str(found.version), alias, str(found.run_id), f"models:/{name}/{found.version}"
    )


@dataclass(frozen=True)
class ServedModel:
    source: ModelSource
    classifier: Predictor
    metrics: dict[str, float]
    loaded_at: str

    @classmethod
    def load(cls, source: ModelSource, device: torch.device) -> "ServedModel":
        """Download, rebuild and self-test (blocking): a model that cannot predict is never
        swapped in."""
        classifier = tracking.load_predictor(source.uri, str(device))
        metrics = dict(tracking.client().get_run(source.run_id).data.metrics)
        served = cls(source, classifier, metrics, datetime.now(UTC).isoformat(timespec="seconds"))
        served.self_test()
        return served

    @property
    def input_shape(self) -> tuple[int, int, int]:
        spec = self.classifier.spec
        return (spec.in_channels, spec.image_size, spec.image_size)

    @property
    def ref(self) -> dict[str, str | None]:
        return {
            "name": self.source.name,
            "version": self.source.version,
            "alias": self.source.alias,
        }

    def self_test(self) -> None:
        """A tiny forward pass; raises when the model cannot predict."""
        blank = np.zeros((1, *self.input_shape), dtype=np.uint8)
        probabilities = self.classifier.serve_proba(blank)
        if (
            not bool(torch.isfinite(probabilities).all())
            or abs(probabilities.sum().item() - 1) > 1e-2
        ):
            raise RuntimeError(f"model {self.source.uri} returns invalid probabilities")

    def result(self, row: torch.Tensor, top_k: int) -> dict[str, Any]:
        classes = self.classifier.spec.classes
        values, indices = row.topk(min(top_k, len(classes)))
        ranked = [
            {"label": classes[i], "class_index": i, "probability": p}
            for p, i in zip(values.tolist(), indices.tolist(), strict=True)
        ]
        best = ranked[0]
        return {
            "label": best["label"],
            "class_index": best["class_index"],
            "confidence": best["probability"],
            "top_k": ranked,
            "model": self.ref,
        }


def tag_keys(*keys: str) -> Any:
    """Ray annotates metrics' tag_keys as ``Tuple[str]`` (one key); any number works."""
    return keys


class ModelMetrics:
    """Prometheus metrics of the classifier replica (exported through Ray's metrics agent)."""

    def __init__(self) -> None:
        tags = tag_keys("model_name", "model_version")
        self.served = Gauge(
            "rayvision_model_served", "1 for the model version this replica serves", tags
        )
        self.predictions = MetricCounter("rayvision_predictions", "images classified", tags)
        self.batch_size = Histogram(
            "rayvision_batch_size", "images per forward pass", [1, 2, 4, 8, 16, 32, 64, 128]
        )
        self.forward_ms = Histogram(
            "rayvision_forward_ms", "forward pass time per batch", [1, 2, 5, 10, 25, 50, 100, 250]
        )

    def swapped(self, old: ServedModel | None, new: ServedModel) -> None:
        if old is not None:
            self.served.set(0, _version_tags(old))
        self.served.set(1, _version_tags(new))

    def batch(self, served: ServedModel, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.forward_ms.observe(seconds * 1000)
        self.predictions.inc(size, _version_tags(served))


def _version_tags(served: ServedModel) -> dict[str, str]:
    return {"model_name": served.source.name, "model_version": served.source.version or "none"}


@serve.deployment(
    name="Classifier",
    # 0.75: two replicas and the ingress fit a 2-CPU laptop cluster (one torch thread each).
    ray_actor_options={"num_cpus": 0.75},
    # Requests here are whole batches from the ingress, run one at a time: a replica that
    # always holds one is saturated, so more than one on average adds a replica.
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1},
    max_ongoing_requests=8,
    # Past this many batches waiting at a caller, new ones fail fast with 503.
    max_queued_requests=16,
    health_check_period_s=10,
    health_check_timeout_s=30,
    # An empty user_config still calls reconfigure(), which loads the model at start-up.
    user_config={},
)
class ModelServer:
    def __init__(self) -> None:
        self._device = pick_device()
        self._served: ServedModel | None = None
        self._settings = ModelSettings()
        self._swap_lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._last_error: str | None = None
        self._batch_sizes: Counter[int] = Counter()
        self._metrics = ModelMetrics()
        # One forward pass at a time, off the event loop, which keeps taking the next batches.
        self._forward = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Start-up and every ``serve deploy`` with a new user_config. The first load must
        succeed (no model, no replica); a later failing switch keeps serving the current
        model and the poller retries it."""
        settings = ModelSettings.from_sources(user_config, os.environ)
        self._settings = settings
        if self._served is None:
            await self._follow(settings)
        else:
            await self._follow_or_keep(settings)
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll())

    async def _follow(self, settings: ModelSettings) -> None:
        """Load what the settings point at when it differs from what is served, then swap."""
        async with self._swap_lock:
            source = await asyncio.to_thread(resolve_source, settings)
            current = self._served
            if current is not None and current.source.same_model(source):
                if current.source != source:  # another alias now names the same version
                    self._served = replace(current, source=source)
                return
            logger.info("loading %s", source.uri)
            new = await asyncio.to_thread(ServedModel.load, source, self._device)
            # The swap: batches already running keep their reference to the old model, which
            # is released when the last of them finishes.
            self._served = new
            self._metrics.swapped(current, new)
            logger.info("serving %s version %s", source.name, source.version)

    async def _follow_or_keep(self, settings: ModelSettings) -> None:
        try:
            await self._follow(settings)
            self._last_error = None
        except Exception as exc:  # registry down, alias missing, bad artifact: keep serving
            self._last_error = f"{type(exc).__name__}: {exc}"
            logger.warning("keeping the current model: %s", self._last_error)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._settings.poll_interval_s)
            await self._follow_or_keep(self._settings)

    def _model(self) -> ServedModel:
        if self._served is None:
            raise RuntimeError("no model loaded")
        return self._served

    async def predict(self, requests: list[tuple[np.ndarray, int]]) -> list[dict[str, Any] | None]:
        """A batch of (decoded image, top-k) -> their predictions, in one forward pass. None for
        an image decoded for another input shape than the served model's (a swap landed in
        between: the caller decodes it again)."""
        served = self._model()  # one model for the whole batch, even if a swap lands meanwhile
        fits = [i for i, (image, _) in enumerate(requests) if image.shape == served.input_shape]
        results: list[dict[str, Any] | None] = [None] * len(requests)
        if fits:
            started = time.perf_counter()
            probabilities = await asyncio.get_running_loop().run_in_executor(
                self._forward,
                served.classifier.serve_proba,
                np.stack([requests[i][0] for i in fits]),
            )
            self._metrics.batch(served, len(fits), time.perf_counter() - started)
            self._batch_sizes[len(fits)] += 1
            for i, row in zip(fits, probabilities, strict=True):
                results[i] = served.result(row, requests[i][1])
        return results

    def input_shape(self) -> tuple[int, int, int]:
        return self._model().input_shape

    def check_health(self) -> None:
        """Serve calls this periodically and replaces the replica when it raises."""
        self._model().self_test()

    def health(self) -> dict[str, Any]:
        self.check_health()
        return {"status": "ok", "model": self._model().ref}

    def describe(self) -> dict[str, Any]:
        """The served model; the ingress adds its batching settings."""
        served = self._model()
        spec = served.classifier.spec
        return {
            **served.ref,
            "run_id": served.source.run_id,
            "model_uri": served.source.uri,
            "metrics": served.metrics,
            "loaded_at": served.loaded_at,
            "device": str(self._device),
            "precision": str(served.classifier.serving_dtype).removeprefix("torch."),
            "architecture": spec.architecture,
            "dataset": spec.dataset,
            "classes": list(spec.classes),
            "input_shape": list(served.input_shape),
            "poll_interval_s": self._settings.poll_interval_s,
            "last_error": self._last_error,
        }

    def batch_size_counts(self) -> dict[int, int]:
        """How many forward passes ran at each batch size since start (for benchmarks)."""
        return dict(self._batch_sizes)


# ---------------------------------------------------------------------------------------------
# HTTP ingress


class ClassProbability(BaseModel):
    label: str
    class_index: int
    probability: float


class ModelRef(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: str | None
    alias: str | None


class Prediction(BaseModel):
    label: str
    class_index: int
    confidence: float
    top_k: list[ClassProbability]
    model: ModelRef


class BatchPrediction(BaseModel):
    predictions: list[Prediction]


class ModelInfo(ModelRef):
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
    model: ModelRef


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
RAW_OR_MULTIPART = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
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
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["files"],
                }
            }
        },
    }
}

api = FastAPI(
    title="rayvision image classifier",
    description="Classifies images with the model an MLflow registry alias points at.",
    version="1",
)


class UnavailableError(RuntimeError):
    """The service cannot answer right now (503); the client may retry."""


class HttpMetrics:
    def __init__(self) -> None:
        self.requests = MetricCounter(
            "rayvision_http_requests",
            "HTTP requests by route and status",
            tag_keys("route", "status"),
        )
        self.latency_ms = Histogram(
            "rayvision_http_latency_ms",
            "HTTP request latency",
            [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000],
            ("route",),
        )
        self.rejected = MetricCounter(
            "rayvision_rejected_inputs", "bad inputs by error code", ("error",)
        )


@functools.cache
def http_metrics() -> HttpMetrics:
    """Created on first use, inside the ingress replica (where Ray's metrics are exported)."""
    return HttpMetrics()


class RequestMetrics:
    """ASGI middleware: count and time every request by matched route and final status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            # The route template, not the raw path: unknown paths must not explode the labels.
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics = http_metrics()
            metrics.requests.inc(tags={"route": route, "status": str(status)})
            metrics.latency_ms.observe((time.perf_counter() - started) * 1000, {"route": route})


api.add_middleware(RequestMetrics)


def error_response(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"error": code, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, headers=headers)


@api.exception_handler(InputError)
async def bad_input(request: Request, exc: InputError) -> JSONResponse:
    http_metrics().rejected.inc(tags={"error": exc.code})
    return JSONResponse(exc.to_json(), status_code=exc.status)


@api.exception_handler(RequestValidationError)
async def bad_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return await bad_input(request, InputError(422, "invalid_parameter", detail))


@api.exception_handler(HTTPException)
async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    code = "not_found" if exc.status_code == 404 else "http_error"
    return error_response(exc.status_code, code, str(exc.detail), exc.headers)


@api.exception_handler(BackPressureError)
@api.exception_handler(DeploymentUnavailableError)
@api.exception_handler(UnavailableError)
async def unavailable(request: Request, exc: Exception) -> JSONResponse:
    detail = "too many requests queued" if isinstance(exc, BackPressureError) else str(exc)
    return error_response(503, "unavailable", f"{detail}; retry shortly", {"Retry-After": "1"})


async def read_body(request: Request, cap: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``cap`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise InputError(413, "too_large", f"{declared} bytes; the limit is {cap} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise InputError(413, "too_large", f"more than {cap} bytes; the limit is {cap}")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_files(headers: Headers, body: bytes, field: str, max_files: int) -> list[bytes]:
    """The file parts named ``field`` of a multipart body already read (and capped)."""

    async def replay() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(headers, replay(), max_files=max_files, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        # Starlette's only signal for "max_files exceeded" is this message.
        if exc.message.startswith("Too many files"):
            raise InputError(
                413, "too_many_files", f"more than {max_files} files; the limit is {max_files}"
            ) from exc
        raise InputError(400, "malformed_multipart", exc.message) from exc
    uploads = form.getlist(field)
    if not uploads:
        raise InputError(400, "missing_file", f"multipart body has no {field!r} file field")
    files = [upload for upload in uploads if isinstance(upload, UploadFile)]
    if len(files) != len(uploads):
        raise InputError(400, "missing_file", f"{field!r} must be a file, not a text field")
    return [await upload.read() for upload in files]


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


TOP_K = Query(3, ge=1, le=1000, description="how many classes to rank (capped at all of them)")


@serve.deployment(
    name="ClassifierAPI",
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=128,
    max_queued_requests=256,
)
@serve.ingress(api)
class ClassifierAPI:
    def __init__(self, classifier: DeploymentHandle) -> None:
        self._classifier = classifier
        self._settings = ApiSettings()
        self._input_shape: tuple[int, int, int] | None = None
        # One lookup for the requests of a burst, not one each: they would flood the
        # Classifier's queue and be refused with 503.
        self._shape_lock = asyncio.Lock()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        settings = ApiSettings.model_validate(user_config)
        batching: Any = self._infer  # serve.batch's type hints omit its setters
        batching.set_max_batch_size(settings.max_batch_size)
        batching.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self._settings = settings

    async def _shape(self) -> tuple[int, int, int]:
        async with self._shape_lock:
            if self._input_shape is None:
                channels, height, width = await self._classifier.input_shape.remote()
                self._input_shape = (channels, height, width)
            return self._input_shape

    async def _decode(self, data: bytes, shape: tuple[int, int, int], name: str) -> np.ndarray:
        channels, size, _ = shape
        try:
            if len(data) <= INLINE_DECODE_BYTES:
                return decode(data, size, channels, self._settings.limits)
            return await asyncio.to_thread(decode, data, size, channels, self._settings.limits)
        except InputError as exc:
            raise InputError(exc.status, exc.code, f"{name}{exc.detail}") from exc

    @serve.batch(
        max_batch_size=MAX_BATCH_SIZE,
        batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S,
        max_concurrent_batches=MAX_CONCURRENT_BATCHES,
    )
    async def _infer(self, requests: list[tuple[np.ndarray, int]]) -> list[dict[str, Any] | None]:
        """Images of concurrent requests, one Classifier call for all of them."""
        results: list[dict[str, Any] | None] = await self._classifier.predict.remote(requests)
        return results

    async def _classify(self, blobs: list[bytes], top_k: int, batch: bool) -> list[Any]:
        """Decode every image first (a bad one fails the request before any model work), then
        queue each for the next batch, with everyone else's images."""
        for _ in range(INPUT_SHAPE_RETRIES):
            shape = await self._shape()
            images = [
                await self._decode(blob, shape, f"files[{i}]: " if batch else "")
                for i, blob in enumerate(blobs)
            ]
            results = await asyncio.gather(*(self._infer((image, top_k)) for image in images))
            if all(result is not None for result in results):
                return results
            self._input_shape = None  # the served model changed its input shape: decode again
        raise UnavailableError("the served model is changing")

    @api.post(
        "/predict",
        response_model=Prediction,
        responses=ERRORS,
        openapi_extra=RAW_OR_MULTIPART,
        summary="Classify one image (raw body, or multipart field `file`)",
    )
    async def predict(self, request: Request, top_k: int = TOP_K) -> Any:
        multipart = is_multipart(request)
        body = await read_body(
            request, self._settings.max_image_bytes + (MULTIPART_SLACK if multipart else 0)
        )
        blobs = await read_files(request.headers, body, "file", 1) if multipart else [body]
        (result,) = await self._classify(blobs, top_k, batch=False)
        return result

    @api.post(
        "/predict/batch",
        response_model=BatchPrediction,
        responses=ERRORS,
        openapi_extra=MULTIPART_FILES,
        summary="Classify several images (multipart, repeated field `files`), in order",
    )
    async def predict_batch(self, request: Request, top_k: int = TOP_K) -> Any:
        if not is_multipart(request):
            raise InputError(400, "malformed_multipart", "send multipart/form-data with `files`")
        body = await read_body(request, self._settings.max_batch_bytes)
        limit = self._settings.max_batch_images
        blobs = await read_files(request.headers, body, "files", limit)
        return {"predictions": await self._classify(blobs, top_k, batch=True)}

    @api.get("/model", response_model=ModelInfo, responses=ERRORS, summary="The served model")
    async def model(self) -> Any:
        described = await self._classifier.describe.remote()
        return {
            **described,
            "max_batch_size": self._settings.max_batch_size,
            "batch_wait_timeout_s": self._settings.batch_wait_timeout_s,
        }

    @api.get(
        "/health",
        response_model=Health,
        responses=ERRORS,
        summary="200 only when a model is loaded and predicts",
    )
    async def health(self) -> Any:
        try:
            return await self._classifier.health.remote()
        except Exception as exc:  # whatever stops the classifier answering makes us unhealthy
            return error_response(503, "unhealthy", f"{type(exc).__name__}: {exc}")


# cast: mypy does not apply class decorators, so it cannot see that these are Deployments.
app = cast(Deployment, ClassifierAPI).bind(cast(Deployment, ModelServer).bind())
