"""Every error the service answers is a JSON body ``{"error", "status", "detail"}``. A detail
tells a client what to change in its request, or that it may retry; what went wrong inside
(exception text, model URIs, deployment names) goes to the replica's log."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.preprocessing import InputError

logger = logging.getLogger("ray.serve")


class UnavailableError(RuntimeError):
    """The service cannot answer right now (503); the client may retry."""


def error_response(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"error": code, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, headers=headers)


def unavailable_response(detail: str) -> JSONResponse:
    """503 with Retry-After: overloaded, no replica, or a model that keeps changing."""
    return error_response(503, "unavailable", f"{detail}; retry shortly", {"Retry-After": "1"})


async def health_response(check: Awaitable[dict[str, Any]]) -> dict[str, Any] | JSONResponse:
    """The health check's answer, or 503 for whatever stops it answering (no model loaded, a
    model that fails its self-test, a replica that is gone)."""
    try:
        return await check
    except Exception:  # whatever stops the check answering means unhealthy
        logger.warning("health check failed", exc_info=True)
        return error_response(503, "unhealthy", "no model is ready to answer")


def install_error_handlers(
    api: FastAPI, rejected: Callable[[str], None] = lambda code: None
) -> None:
    """JSON bodies for bad input (4xx; ``rejected`` is told each error code), unknown routes,
    and 503 for an overloaded or changing service."""
    # Ray's overload errors, imported here: the rest of app.serving runs without Ray.
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    @api.exception_handler(InputError)
    async def bad_input(request: Request, exc: InputError) -> JSONResponse:
        rejected(exc.code)
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
    async def overloaded(request: Request, exc: BackPressureError) -> JSONResponse:
        return unavailable_response("too many requests queued")

    @api.exception_handler(DeploymentUnavailableError)
    async def no_replica(request: Request, exc: DeploymentUnavailableError) -> JSONResponse:
        logger.warning("no replica to answer: %s", exc)
        return unavailable_response("no replica is available")

    @api.exception_handler(RayActorError)
    async def replica_lost(request: Request, exc: RayActorError) -> JSONResponse:
        # A Classifier replica that died (or became unreachable) with this request in it: the
        # next try goes to a live one.
        logger.warning("a model replica was lost mid-request: %s", exc)
        return unavailable_response("the model replica answering was lost")

    @api.exception_handler(UnavailableError)
    async def unavailable(request: Request, exc: UnavailableError) -> JSONResponse:
        return unavailable_response(str(exc))
