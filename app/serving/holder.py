"""The model a replica serves, and how it changes: plain asyncio, no Ray.

A new version is loaded and validated beside the current one, then one assignment swaps
them: batches already running keep their reference to the old model, which is released when the
last of them finishes. A switch that fails keeps the current model and logs why (an error for a
model refused at load, a warning for a registry that does not answer); clients see the status
``degraded`` until a switch works. The poller tries again every ``poll_interval_s``.

Each model loaded is kept on the node's disk (``LastModel``): a replica that starts while the
registry is unreachable serves the last one loaded for its settings, ``degraded`` until the
registry answers and confirms it or names another.

A replica that starts before anything was promoted to the alias it follows (a first deploy)
starts without a model, ``waiting``: it answers 503 and passes Serve's health check, and serves
the first model the poller finds at the alias.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Protocol

import numpy as np
import torch

from app import tracking
from app.serving.errors import UnavailableError
from app.serving.last_model import LastModel
from app.serving.served_model import ServedModel, Shape, UnservableModelError
from app.serving.settings import ModelSettings
from app.serving.source import not_there_yet, resolve_source

logger = logging.getLogger("ray.serve")

# One decoded image and how many classes to rank for it.
ImageRequest = tuple[np.ndarray, int]


class NoModelError(UnavailableError):
    """Nothing is loaded yet: the replica cannot answer (503, retry later)."""


class HolderObserver(Protocol):
    """Told of every swap, failed switch and forward pass (Prometheus metrics in a replica)."""

    def swapped(self, old: ServedModel | None, new: ServedModel) -> None: ...

    def failed(self, error: Exception) -> None: ...

    def batch(self, served: ServedModel, size: int, seconds: float) -> None: ...

    def status(self, status: str) -> None: ...


class Unobserved:
    def swapped(self, old: ServedModel | None, new: ServedModel) -> None:
        pass

    def failed(self, error: Exception) -> None:
        pass

    def status(self, status: str) -> None:
        pass

    def batch(self, served: ServedModel, size: int, seconds: float) -> None:
        pass


class ModelHolder:
    def __init__(
        self,
        device: torch.device,
        observer: HolderObserver | None = None,
        last_model: LastModel | None = None,
    ) -> None:
        self.device = device
        self._last_model = last_model
        self.settings = ModelSettings()
        # Why the last switch failed (for the log; clients only see "degraded").
        self.last_error: str | None = None
        # How many forward passes ran at each batch size since start (for benchmarks).
        self.batch_sizes: Counter[int] = Counter()
        self._served: ServedModel | None = None
        self._observer = observer or Unobserved()
        self._swap_lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        # One forward pass at a time, off the event loop, which keeps taking the next batches.
        self._forward = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")

    @property
    def served(self) -> ServedModel | None:
        return self._served

    def model(self) -> ServedModel:
        if self._served is None:
            raise NoModelError("no model is promoted yet")
        return self._served

    async def configure(self, settings: ModelSettings) -> None:
        """Start-up and every new user_config. The first load must succeed (no model, no
        replica); a later failing switch keeps serving the current model. Starts the poller."""
        self.settings = settings
        if self._served is None:
            await self._first_load(settings)
        else:
            await self.follow_or_keep(settings)
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll())

    async def follow(self, settings: ModelSettings) -> None:
        """Load what the settings point at when it differs from what is served, then swap."""
        async with self._swap_lock:
            source = await asyncio.to_thread(resolve_source, settings)
            current = self._served
            if current is not None and current.source.same_model(source):
                if current.source != source:  # reached another way (another alias, a pin)
                    self._served = replace(current, source=source)
                return
            logger.info("loading %s", source.pinned_uri)
            new = await asyncio.to_thread(ServedModel.load, source, self.device)
            self._served = new  # the swap
            self._observer.swapped(current, new)
            logger.info("serving %s version %s: %s", source.name, source.version, new.internals())
            if self._last_model is not None:
                await asyncio.to_thread(self._last_model.keep, settings, new)

    async def _first_load(self, settings: ModelSettings) -> None:
        """``follow``; when the registry is unreachable, the last model kept for these settings
        instead, marked degraded; when the alias has nothing yet, no model, waiting for it.
        Otherwise nothing to serve raises (the replica does not start)."""
        try:
            await self.follow(settings)
        except Exception as exc:
            if not_there_yet(settings, exc):
                self._failed(exc)
                logger.warning("nothing to serve yet, waiting for the alias: %s", self.last_error)
                return
            if self._last_model is None or not tracking.is_outage(exc):
                raise
            kept = await asyncio.to_thread(self._last_model.load, settings, self.device)
            if kept is None:
                raise
            self._served = kept
            self._observer.swapped(None, kept)
            self._failed(exc)
            logger.warning(
                "the registry is unreachable: serving the last model loaded here, %s version "
                "%s, until it answers",
                kept.source.name,
                kept.source.version,
            )

    async def follow_or_keep(self, settings: ModelSettings) -> None:
        """``follow``, but a failure (registry down, alias missing, a model refused at load)
        keeps the current model and is recorded in ``last_error``."""
        try:
            await self.follow(settings)
            self.last_error = None
            self._observer.status(self.status())
        except Exception as exc:  # registry down, alias missing, bad artifact: keep serving
            self._failed(exc)
            refused = isinstance(exc, UnservableModelError)
            level = logging.ERROR if refused else logging.WARNING
            kept = "keeping the current model" if self._served else "still no model to serve"
            logger.log(level, "%s: %s", kept, self.last_error)

    def _failed(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._observer.failed(exc)
        self._observer.status(self.status())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            await self.follow_or_keep(self.settings)

    async def close(self) -> None:
        """Stop the poller and the forward-pass thread."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        self._forward.shutdown(wait=False)

    async def predict(self, requests: list[ImageRequest]) -> list[dict[str, Any] | None]:
        """A batch of (decoded image, top-k) -> their predictions, in one forward pass. None for
        an image decoded for another input shape than the served model's (a swap landed in
        between: the caller decodes it again)."""
        served = self.model()  # one model for the whole batch, even if a swap lands meanwhile
        fits = [i for i, (image, _) in enumerate(requests) if image.shape == served.input_shape]
        results: list[dict[str, Any] | None] = [None] * len(requests)
        if not fits:
            return results
        started = time.perf_counter()
        probabilities = await asyncio.get_running_loop().run_in_executor(
            self._forward,
            served.predictor.serve_proba,
            np.stack([requests[i][0] for i in fits]),
        )
        self._observer.batch(served, len(fits), time.perf_counter() - started)
        self.batch_sizes[len(fits)] += 1
        for i, row in zip(fits, probabilities, strict=True):
            results[i] = served.result(row, requests[i][1])
        return results

    def input_shape(self) -> Shape:
        return self.model().input_shape

    def check_health(self) -> None:
        """Raises unless a model is loaded and passes its self-test, or none is promoted yet
        (a replica that has nothing to serve yet is replaced by one that has nothing either)."""
        if self._served is not None:
            self._served.self_test()

    def status(self) -> str:
        """``ready``; ``degraded`` while switching to what the settings name fails (an older
        model, or one that cannot be checked against the registry, keeps serving); ``waiting``
        with no model, until one is promoted to the alias."""
        if self._served is None:
            return "waiting"
        return "ready" if self.last_error is None else "degraded"

    def health(self) -> dict[str, Any]:
        self.check_health()
        return {"status": self.status(), "model": self.model().ref}

    def describe(self) -> dict[str, Any]:
        """The served model as clients see it (``ServedModel.describe``) and its status."""
        return {**self.model().describe(), "status": self.status()}
