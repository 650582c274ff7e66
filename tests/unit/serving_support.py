"""Helpers of the serving tests that run a ``ModelHolder`` on registered models (the registry:
tests/unit/serving_fixtures.py)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from app.serving.holder import ModelHolder, Unobserved
from app.serving.last_model import LastModel
from app.serving.settings import ModelSettings

T = TypeVar("T")
CPU = torch.device("cpu")
NEVER = 3600.0  # a poll interval no test waits for


@dataclass(frozen=True)
class Store:
    """A registry shared by the serving tests (none moves these aliases):
    digits v1 = run_a (@champion), v2 = run_b (@challenger), v3 = run_a again;
    broken v1 = run_a (@champion), v2 = a model with NaN weights (fails its self-test),
    v3 = a model of 2-channel images (predicts, but no decoded image has 2 channels);
    shapes v1 = run_a (1x8x8), v2 = a CIFAR-shaped model (3x32x32)."""

    uri: str
    run_a: str
    run_b: str
    accuracy_a: float


def with_holder(
    scenario: Callable[[ModelHolder], Coroutine[Any, Any, T]],
    observer: Unobserved | None = None,
    last_model: LastModel | None = None,
) -> T:
    """Run ``scenario`` with a fresh holder on an event loop of its own; close it after."""

    async def run() -> T:
        holder = ModelHolder(CPU, observer, last_model)
        try:
            return await scenario(holder)
        finally:
            await holder.close()

    return asyncio.run(run())


def settings(name: str = "digits", **values: Any) -> ModelSettings:
    return ModelSettings(model_name=name, poll_interval_s=values.pop("poll", NEVER), **values)


def colour_png(size: int = 32) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()
