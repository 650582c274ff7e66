"""HTTP inference on Ray Serve for the model an MLflow alias points at: the deployments and the
routes. What they do lives in ``app.serving``, where it is unit-tested.

Two deployments (``serve run --working-dir . serve/config.yaml``, or ``serve deploy`` where the
image carries the code). Their options (replicas, autoscaling, queue bounds, CPUs, user_config)
live in serve/config.yaml only; from Python, ``build_app(deployment_options(load_config()))``
applies them as ``serve deploy`` does.

- ``ClassifierAPI``, the FastAPI ingress: reads bounded bodies (raw bytes or multipart), decodes
  them for the served input shape and answers every bad input with a 4xx JSON error. It groups
  the decoded images of concurrent requests with ``@serve.batch`` and sends the Classifier one
  call per batch: the hop between the deployments is paid per batch, not per image.
- ``Classifier``: a ``ModelHolder`` with the model the settings point at, on the replica's
  device (CUDA with float16 batches when it has a GPU), one forward pass per batch. It follows
  the alias every ``poll_interval_s``: a new version is loaded and validated (its spec, and a
  dry-run prediction) beside the old one, then swapped in, so no request fails during a
  promotion; a model that cannot serve is refused and the old one keeps serving.

Routes: ``POST /predict``, ``POST /predict/batch``, ``GET /model``, ``GET /health``, ``/docs``.

No ``from __future__ import annotations`` here: FastAPI must resolve the route signatures of
the class-based views Serve builds, and string annotations there stay unresolved.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import yaml
from fastapi import FastAPI, Request
from ray import serve
from ray.serve import Application
from ray.serve.deployment import Deployment
from ray.serve.handle import DeploymentHandle

from app.devices import pick_device
from app.serving.bodies import read_image, read_images
from app.serving.errors import health_response, install_error_handlers
from app.serving.holder import ImageRequest, ModelHolder
from app.serving.last_model import LastModel, cache_root
from app.serving.recent_health import RecentHealth
from app.serving.schemas import (
    ERRORS,
    MULTIPART_FILES,
    RAW_OR_MULTIPART,
    TOP_K,
    BatchPrediction,
    Health,
    ModelInfo,
    Prediction,
)
from app.serving.served_model import Shape
from app.serving.settings import ApiSettings, ModelSettings
from app.serving.shaped import ShapedClassifier
from app.serving.telemetry import ModelMetrics, RequestMetrics, count_rejected

CONFIG = Path(__file__).resolve().parent / "config.yaml"
APP_NAME = "classifier"
# Batches one ingress replica has in flight to the Classifier: one in each replica's forward
# pass (autoscaling allows two) and one more each crossing the hop meanwhile.
MAX_CONCURRENT_BATCHES = 4
# The batching the ingress starts with, until its user_config sets it.
_BATCHING = ApiSettings()


@serve.deployment
class Classifier:
    def __init__(self) -> None:
        self._holder = ModelHolder(pick_device(), ModelMetrics(), LastModel(cache_root()))

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Start-up and every ``serve deploy`` with a new user_config (config.yaml always gives
        one, even empty, so that the model loads at start-up)."""
        await self._holder.configure(ModelSettings.from_sources(user_config, os.environ))

    async def predict(self, requests: list[ImageRequest]) -> list[dict[str, Any] | None]:
        return await self._holder.predict(requests)

    def input_shape(self) -> Shape:
        return self._holder.input_shape()

    def check_health(self) -> None:
        """Serve calls this periodically and replaces the replica when it raises."""
        self._holder.check_health()

    def health(self) -> dict[str, Any]:
        return self._holder.health()

    def describe(self) -> dict[str, Any]:
        return self._holder.describe()

    def batch_size_counts(self) -> dict[int, int]:
        """How many forward passes ran at each batch size since start (for benchmarks)."""
        return dict(self._holder.batch_sizes)


api = FastAPI(
    title="rayvision image classifier",
    description="Classifies images with the model an MLflow registry alias points at.",
    version="1",
)
api.add_middleware(RequestMetrics)
install_error_handlers(api, count_rejected)


@serve.deployment
@serve.ingress(api)
class ClassifierAPI:
    def __init__(self, classifier: DeploymentHandle) -> None:
        self._classifier = classifier
        self._settings = ApiSettings()
        self._images = ShapedClassifier(self._input_shape, self._infer)
        # Probes are answered from a check at most a few seconds old, made in the background.
        self._health = RecentHealth(lambda: health_response(self._classifier.health.remote()))

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        settings = ApiSettings.model_validate(user_config)
        batching: Any = self._infer  # serve.batch's type hints omit its setters
        batching.set_max_batch_size(settings.max_batch_size)
        batching.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self._settings = settings

    async def _input_shape(self) -> Shape:
        shape: Shape = await self._classifier.input_shape.remote()
        return shape

    @serve.batch(
        max_batch_size=_BATCHING.max_batch_size,
        batch_wait_timeout_s=_BATCHING.batch_wait_timeout_s,
        max_concurrent_batches=MAX_CONCURRENT_BATCHES,
    )
    async def _infer(self, requests: list[ImageRequest]) -> list[dict[str, Any] | None]:
        """Images of concurrent requests, one Classifier call for all of them."""
        results: list[dict[str, Any] | None] = await self._classifier.predict.remote(requests)
        return results

    @api.post(
        "/predict",
        response_model=Prediction,
        responses=ERRORS,
        openapi_extra=RAW_OR_MULTIPART,
        summary="Classify one image (raw body, or multipart field `file`)",
    )
    async def predict(self, request: Request, top_k: int = TOP_K) -> Any:
        image = await read_image(request, self._settings)
        limits = self._settings.limits
        (result,) = await self._images.classify([image], top_k, limits, batch=False)
        return result

    @api.post(
        "/predict/batch",
        response_model=BatchPrediction,
        responses=ERRORS,
        openapi_extra=MULTIPART_FILES,
        summary="Classify several images (multipart, repeated field `files`), in order",
    )
    async def predict_batch(self, request: Request, top_k: int = TOP_K) -> Any:
        images = await read_images(request, self._settings)
        limits = self._settings.limits
        return {"predictions": await self._images.classify(images, top_k, limits, batch=True)}

    @api.get(
        "/model",
        response_model=ModelInfo,
        responses=ERRORS,
        summary="The served model: name, version, alias, status, input shape, classes",
    )
    async def model(self) -> Any:
        return await self._classifier.describe.remote()

    @api.get(
        "/health",
        response_model=Health,
        responses=ERRORS,
        summary="200 when a model is loaded and predicts (ready or degraded), checked each second",
    )
    async def health(self) -> Any:
        return await self._health.answer()


def load_config(path: Path = CONFIG) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    return config


def deployment_options(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each deployment's options in a Serve config (serve/config.yaml's form), by name."""
    (found,) = (a for a in config["applications"] if a["name"] == APP_NAME)
    return {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in found["deployments"]}


def configured(options: Mapping[str, Mapping[str, Any]]) -> dict[str, Deployment]:
    """Each deployment with its options (``deployment_options``) applied."""
    # cast: mypy does not apply class decorators, so it cannot see that these are Deployments.
    deployments = {"Classifier": Classifier, "ClassifierAPI": ClassifierAPI}
    unknown = set(options) - set(deployments)
    if unknown:
        raise ValueError(f"no deployment named {sorted(unknown)}; there are {sorted(deployments)}")
    return {
        name: cast(Deployment, deployment).options(**options.get(name, {}))
        for name, deployment in deployments.items()
    }


def build_app(options: Mapping[str, Mapping[str, Any]]) -> Application:
    """The application with each deployment's options applied, as ``serve deploy`` applies a
    config's: for deploying from Python (``serve.run``)."""
    deployments = configured(options)
    return deployments["ClassifierAPI"].bind(deployments["Classifier"].bind())


# The application serve/config.yaml names (import_path), with that file's options applied here
# too: `serve run serve.service:app` without the config serves the same thing.
app = build_app(deployment_options(load_config()))
