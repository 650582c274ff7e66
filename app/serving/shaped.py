"""Decode images for the input shape the served model takes, and decode them again when a swap
changes that shape between decoding and the forward pass."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from PIL import Image

from app.preprocessing import InputError, Limits, decoded_pixels, open_image
from app.serving.decoding import DecodePool
from app.serving.errors import UnavailableError
from app.serving.served_model import Shape

# A swap can change the input shape between decoding and the forward pass; decode again.
INPUT_SHAPE_RETRIES = 3

# One decoded image and its top-k -> its prediction, or None when the model that ran it takes
# another input shape.
Infer = Callable[[tuple[np.ndarray, int]], Awaitable[dict[str, Any] | None]]


def _naming(exc: InputError, index: int, batch: bool) -> InputError:
    """A batch's error names the image it is about."""
    return InputError(exc.status, exc.code, f"files[{index}]: {exc.detail}") if batch else exc


def _checked(blobs: list[bytes], shape: Shape, limits: Limits, batch: bool) -> list[Image.Image]:
    """Every image's header checked (a bad one fails the request before any pixel is decoded),
    and the pixels of them all within the request's budget."""
    channels, size, _ = shape
    images = []
    for i, blob in enumerate(blobs):
        try:
            images.append(open_image(blob, size, channels, limits))
        except InputError as exc:
            raise _naming(exc, i, batch) from exc
    total = sum(decoded_pixels(image) for image in images)
    if total > limits.max_request_pixels:
        raise InputError(
            413,
            "too_many_pixels",
            f"the images decode to {total} pixels in all; the limit per request is "
            f"{limits.max_request_pixels}",
        )
    return images


class ShapedClassifier:
    """Decodes for the served model's input shape (asked once and remembered) and hands each
    image to ``infer``."""

    def __init__(
        self,
        lookup_shape: Callable[[], Awaitable[Shape]],
        infer: Infer,
        pool: DecodePool | None = None,
    ) -> None:
        self._lookup_shape = lookup_shape
        self._infer = infer
        self._pool = pool or DecodePool()
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
            channels, size, _ = shape
            images = []
            for i, image in enumerate(_checked(blobs, shape, limits, batch)):
                try:
                    images.append(await self._pool.decode(image, size, channels))
                except InputError as exc:
                    raise _naming(exc, i, batch) from exc
            results = await asyncio.gather(*(self._infer((image, top_k)) for image in images))
            answered = [result for result in results if result is not None]
            if len(answered) == len(results):
                return answered
            self._shape = None
        raise UnavailableError("the served model is changing")
