"""What the service answers while the served model changes or breaks, on real registered
models: images decoded again for a new input shape, 503 when it keeps changing, and a health
check that tells clients no more than that no model is ready."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import requests
import torch
from fastapi import FastAPI, Request

from app.datasets import dataset_info
from app.serving.bodies import read_image
from app.serving.errors import health_response, install_error_handlers
from app.serving.holder import ModelHolder
from app.serving.schemas import Health
from app.serving.settings import ApiSettings
from app.serving.shaped import INPUT_SHAPE_RETRIES, ShapedClassifier
from tests.unit.serving_support import CPU, Store, colour_png, settings, with_holder
from tests.unit.test_serving_bodies import error_of, serving

# The registry and the log: the fixtures store, registry, serve_log.
pytest_plugins = ["tests.unit.serving_fixtures"]
pytestmark = pytest.mark.slow


class SwappingInfer:
    """Infers one image after switching the holder to the next of ``versions`` of "shapes":
    the swap lands between the caller's decoding and the forward pass."""

    def __init__(self, holder: ModelHolder, versions: list[int]) -> None:
        self.holder = holder
        self.versions = iter(versions)
        self.shapes: list[tuple[int, ...]] = []  # of the images it was given

    async def __call__(self, request: tuple[np.ndarray, int]) -> dict[str, Any] | None:
        self.shapes.append(request[0].shape)
        await self.holder.follow(settings("shapes", model_version=next(self.versions)))
        (result,) = await self.holder.predict([request])
        return result


def test_a_shape_change_after_decoding_decodes_again(registry: Store) -> None:
    png = colour_png()

    async def scenario(holder: ModelHolder) -> None:
        await holder.follow(settings("shapes", model_version=1))
        lookups: list[tuple[int, int, int]] = []

        async def lookup() -> tuple[int, int, int]:
            lookups.append(holder.input_shape())
            return lookups[-1]

        infer = SwappingInfer(holder, [2, 2])
        shaped = ShapedClassifier(lookup, infer)
        (result,) = await shaped.classify([png], 3, ApiSettings().limits, batch=False)
        assert lookups == [(1, 8, 8), (3, 32, 32)]
        assert infer.shapes == [(1, 8, 8), (3, 32, 32)]
        assert result["model"]["version"] == "2"
        assert result["label"] in dataset_info("cifar10").classes

    with_holder(scenario)


def test_health_is_503_without_a_model_or_when_it_fails_its_self_test(
    registry: Store, serve_log: pytest.LogCaptureFixture
) -> None:
    """Clients hear that no model is ready; why (the exception) is in the replica's log."""
    holder = ModelHolder(CPU)
    api = FastAPI()

    async def health() -> dict[str, Any]:
        return holder.health()

    @api.get("/health")
    async def health_route() -> Any:
        return await health_response(health())

    with serving(api) as url:
        empty = requests.get(f"{url}/health", timeout=10)
        assert error_of(empty, 503) == "unhealthy"
        assert empty.json()["detail"] == "no model is ready to answer"
        assert "NoModelError" in serve_log.text
        asyncio.run(holder.follow(settings()))
        ok = requests.get(f"{url}/health", timeout=10)
        assert ok.status_code == 200
        assert ok.json() == {"status": "ready", "model": holder.model().ref}
        Health.model_validate(ok.json())
        with torch.no_grad():  # the loaded model breaks (a device fault, corrupted memory)
            for parameter in holder.model().predictor.model.parameters():
                parameter.fill_(float("nan"))
        broken = requests.get(f"{url}/health", timeout=10)
        assert error_of(broken, 503) == "unhealthy"
        assert broken.json()["detail"] == "no model is ready to answer"
        assert "models:/digits/1 returns invalid probabilities" in serve_log.text
    asyncio.run(holder.close())


def test_a_model_whose_input_shape_keeps_changing_is_503(registry: Store) -> None:
    holder = ModelHolder(CPU)
    asyncio.run(holder.follow(settings("shapes", model_version=1)))
    infer = SwappingInfer(holder, [2, 1, 2, 1])

    async def lookup() -> tuple[int, int, int]:
        return holder.input_shape()

    shaped = ShapedClassifier(lookup, infer)
    api = FastAPI()
    install_error_handlers(api)

    @api.post("/predict")
    async def predict(request: Request) -> Any:
        image = await read_image(request, ApiSettings())
        return await shaped.classify([image], 3, ApiSettings().limits, batch=False)

    with serving(api) as url:
        response = requests.post(f"{url}/predict", data=colour_png(), timeout=60)
    assert error_of(response, 503) == "unavailable"
    assert len(infer.shapes) == INPUT_SHAPE_RETRIES
    asyncio.run(holder.close())
