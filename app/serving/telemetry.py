"""Prometheus metrics of the service, exported through Ray's metrics agent (prefix
``rayvision_``). Created inside the replicas, where Ray exports them."""

from __future__ import annotations

import functools
import time
from typing import Any

from ray.serve.metrics import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.serving.served_model import ServedModel


def tag_keys(*keys: str) -> Any:
    """Ray annotates metrics' tag_keys as ``Tuple[str]`` (one key); any number works."""
    return keys


def _version_tags(served: ServedModel) -> dict[str, str]:
    return {
        "model_name": served.source.name or "",
        "model_version": served.source.version or "none",
    }


class ModelMetrics:
    """The Classifier replica's: the version served, failed switches, images classified, batch
    sizes, forward pass times (a ``HolderObserver``)."""

    def __init__(self) -> None:
        tags = tag_keys("model_name", "model_version")
        self.served = Gauge(
            "rayvision_model_served", "1 for the model version this replica serves", tags
        )
        self.predictions = Counter("rayvision_predictions", "images classified", tags)
        self.degraded = Gauge(
            "rayvision_model_degraded",
            "1 while the replica serves a model it could not confirm or replace as its settings "
            "ask (a failed switch, or the registry unreachable at start)",
        )
        self.failed_switches = Counter(
            "rayvision_model_switch_failures",
            "switches that failed and kept the current model, by exception type",
            tag_keys("error"),
        )
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

    def failed(self, error: Exception) -> None:
        self.failed_switches.inc(tags={"error": type(error).__name__})

    def status(self, status: str) -> None:
        self.degraded.set(int(status == "degraded"))

    def batch(self, served: ServedModel, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.forward_ms.observe(seconds * 1000)
        self.predictions.inc(size, _version_tags(served))


class HttpMetrics:
    """The ingress's: requests by route and status, latency, rejected inputs by error code."""

    def __init__(self) -> None:
        self.requests = Counter(
            "rayvision_http_requests",
            "HTTP requests by route and status",
            tag_keys("route", "status"),
        )
        self.latency_ms = Histogram(
            "rayvision_http_latency_ms",
            "HTTP request latency",
            [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000],
            tag_keys("route"),
        )
        self.rejected = Counter(
            "rayvision_rejected_inputs", "bad inputs by error code", tag_keys("error")
        )


@functools.cache
def http_metrics() -> HttpMetrics:
    """Created on first use, inside the ingress replica (where Ray's metrics are exported)."""
    return HttpMetrics()


def count_rejected(code: str) -> None:
    http_metrics().rejected.inc(tags={"error": code})


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
