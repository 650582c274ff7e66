"""The user_config of each deployment, validated; the MODEL_* environment overrides."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.config import ALIAS_PATTERN, MODEL_NAME_PATTERN
from app.preprocessing import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_REQUEST_PIXELS,
    Limits,
)

# Environment variables that override the Classifier's user_config (non-empty values only).
ENV_OVERRIDES = {
    "MODEL_NAME": "model_name",
    "MODEL_ALIAS": "model_alias",
    "MODEL_VERSION": "model_version",
    "MODEL_RUN_ID": "model_run_id",
}
# Dynamic batching: a batch runs when full or this long after its first request. Waiting longer
# forms bigger batches under load (more throughput, lower latency there) and costs an idle
# request up to the wait: benchmarks/serve_load.py measures both.
MAX_BATCH_SIZE = 16
BATCH_WAIT_TIMEOUT_S = 0.02


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
    def from_sources(cls, user_config: Mapping[str, Any], env: Mapping[str, str]) -> ModelSettings:
        """``user_config`` with every non-empty MODEL_* variable of ``env`` over it."""
        values = dict(user_config)
        values.update({field: env[name] for name, field in ENV_OVERRIDES.items() if env.get(name)})
        return cls.model_validate(values)


@dataclass(frozen=True)
class BodyPace:
    """How slowly a body may arrive: after ``grace_s``, at least ``min_bytes_per_s`` on average
    since the request began (a deadline that moves out with every byte received)."""

    grace_s: float = 5.0
    min_bytes_per_s: int = 16 * 1024

    def deadline(self, started: float, received: int) -> float:
        return started + self.grace_s + received / self.min_bytes_per_s


class ApiSettings(BaseModel):
    """Bounds on every request the ingress accepts, and how it batches images for the model."""

    model_config = ConfigDict(extra="forbid")

    max_image_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1024, le=256 * 1024 * 1024)
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1, le=DEFAULT_MAX_PIXELS * 4)
    max_request_pixels: int = Field(
        default=DEFAULT_MAX_REQUEST_PIXELS, ge=1, le=DEFAULT_MAX_REQUEST_PIXELS * 4
    )
    max_batch_images: int = Field(default=32, ge=1, le=1024)
    max_batch_bytes: int = Field(default=32 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    # A body must arrive at this rate on average once the grace period is over (else 408).
    body_grace_s: float = Field(default=5.0, gt=0, le=300)
    min_body_bytes_per_s: int = Field(default=16 * 1024, ge=1)
    max_batch_size: int = Field(default=MAX_BATCH_SIZE, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(default=BATCH_WAIT_TIMEOUT_S, ge=0, le=1)

    @property
    def body_pace(self) -> BodyPace:
        return BodyPace(self.body_grace_s, self.min_body_bytes_per_s)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_image_bytes, self.max_pixels, self.max_request_pixels)
