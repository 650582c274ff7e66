"""A replica that starts while the registry is unreachable serves the last model its node
loaded for the same settings, degraded, and is ready again once the registry confirms it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.exceptions import MlflowException

from app.datasets import load_splits
from app.serving.holder import ModelHolder
from app.serving.last_model import LastModel
from tests.support import free_port
from tests.unit.serving_support import Store, Unobserved, settings, with_holder

pytest_plugins = ["tests.unit.serving_fixtures"]
pytestmark = pytest.mark.slow


class Statuses(Unobserved):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def status(self, status: str) -> None:
        self.seen.append(status)


def registry_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tracking URI of a server that is not there (nothing listens on the port)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def test_a_replica_starting_without_the_registry_serves_the_last_model_degraded(
    registry: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kept = LastModel(tmp_path)
    digits = torch.as_tensor(load_splits("digits").x_test[:4].numpy())
    requests = [(image.numpy(), 3) for image in digits]

    lineage: dict[str, Any] = {}

    async def while_up(holder: ModelHolder) -> list[dict]:
        await holder.configure(settings())
        lineage.update(holder.describe()["lineage"])
        return await holder.predict(requests)

    answered = with_holder(while_up, last_model=kept)
    assert lineage["training_run_id"]
    assert any(kept.root.iterdir()), "nothing kept on disk"
    statuses = Statuses()

    async def restart(holder: ModelHolder) -> None:
        registry_down(monkeypatch)
        await holder.configure(settings())
        assert holder.describe()["status"] == "degraded"
        assert holder.describe()["lineage"] == lineage  # kept with the model
        assert holder.health()["model"] == answered[0]["model"]  # the same version, validated
        assert await holder.predict(requests) == answered
        served = holder.model()
        # The registry answers again: the same version, confirmed, not loaded again.
        monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.uri)
        await holder.follow_or_keep(holder.settings)
        assert holder.describe()["status"] == "ready" and holder.model() is served

    with_holder(restart, statuses, kept)
    assert statuses.seen == ["degraded", "ready"]


def test_without_a_kept_model_a_replica_cannot_start_without_the_registry(
    registry: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async def start(holder: ModelHolder) -> None:
        registry_down(monkeypatch)
        with pytest.raises(MlflowException):
            await holder.configure(settings())
        assert holder.served is None

    with_holder(start, last_model=LastModel(tmp_path))


def test_a_model_kept_for_other_settings_is_not_served(
    registry: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kept = LastModel(tmp_path)

    async def load_challenger(holder: ModelHolder) -> None:
        await holder.configure(settings(model_alias="challenger"))

    async def start_champion(holder: ModelHolder) -> None:
        registry_down(monkeypatch)
        with pytest.raises(MlflowException):
            await holder.configure(settings())

    with_holder(load_challenger, last_model=kept)
    with_holder(start_champion, last_model=kept)
