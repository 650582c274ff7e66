"""Decode images for the input shape the served model takes, and decode them again when a swap
changes that shape between decoding and the forward pass."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from app.preprocessing import InputError, Limits, to_model_input
from app.serving.errors import UnavailableError
from app.serving.served_model import Shape

# Bodies above this are decoded in a worker thread so a large photo never stalls the event loop;
# small ones (every digit) decode faster inline than a thread hop costs.
INLINE_DECODE_BYTES = 64 * 1024
# A swap can change the input shape between decoding and the forward pass; decode again.
INPUT_SHAPE_RETRIES = 3

# One decoded image and its top-k -> its prediction, or None when the model that ran it takes
# another input shape.
Infer = Callable[[tuple[np.ndarray, int]], Awaitable[dict[str, Any] | None]]


async def decode(data: bytes, shape: Shape, limits: Limits, name: str = "") -> np.ndarray:
    """Image bytes -> a uint8 (C, H, W) array of ``shape``; ``name`` prefixes error details."""
    channels, size, _ = shape
    try:
        if len(data) <= INLINE_DECODE_BYTES:
            return to_model_input(data, size, channels, limits)
        return await asyncio.to_thread(to_model_input, data, size, channels, limits)
    except InputError as exc:
        raise InputError(exc.status, exc.code, f"{name}{exc.detail}") from exc


class ShapedClassifier:
    """Decodes for the served model's input shape (asked once and remembered) and hands each
    image to ``infer``."""

    def __init__(self, lookup_shape: Callable[[], Awaitable[Shape]], infer: Infer) -> None:
        self._lookup_shape = lookup_shape
        self._infer = infer
        self._shape: Shape | None = None
        # One lookup for the requests of a burst, not one each: they would flood the model's
        # queue and be refused with 503.
        self._lock = asyncio.Lock()

    async def shape(self) -> Shape:
        async with self._lock:
            if self._shape is None:
                channels, height, width = await self._lookup_shape()
                self._shape = (channels, height, width)
            return self._shape

    async def classify(
        self, blobs: list[bytes], top_k: int, limits: Limits, batch: bool
    ) -> list[dict[str, Any]]:
        """Decode every image first (a bad one fails the request before any model work), then
        infer them all; decode again when the served model changed its input shape meanwhile,
        and give up with 503 when it keeps changing."""
        for _ in range(INPUT_SHAPE_RETRIES):
            shape = await self.shape()
            images = [
                await decode(blob, shape, limits, f"files[{i}]: " if batch else "")
                for i, blob in enumerate(blobs)
            ]
            results = await asyncio.gather(*(self._infer((image, top_k)) for image in images))
            answered = [result for result in results if result is not None]
            if len(answered) == len(results):
                return answered
            self._shape = None
        raise UnavailableError("the served model is changing")
