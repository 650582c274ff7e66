"""The served model and its holder, on real registered models in a real (SQLite) registry:
resolution of the settings, loading and validation, swaps that keep the old model when they
fail, the poller, and what the holder tells clients."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from app import model_registry, tracking
from app.datasets import load_splits
from app.serving.errors import UnavailableError
from app.serving.holder import ModelHolder, NoModelError, Unobserved
from app.serving.schemas import ModelInfo
from app.serving.served_model import UnservableModelError
from app.serving.settings import ModelSettings
from app.serving.source import resolve_source
from tests.unit.serving_support import Store, settings, with_holder

# The registry and the log: the fixtures store, registry, serve_log.
pytest_plugins = ["tests.unit.serving_fixtures"]
pytestmark = pytest.mark.slow


class Failures(Unobserved):
    """Records the error of every failed switch."""

    def __init__(self) -> None:
        self.errors: list[Exception] = []

    def failed(self, error: Exception) -> None:
        self.errors.append(error)


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# Which model the settings mean


def test_resolution_follows_the_precedence_with_the_environment(registry: Store) -> None:
    by_alias = resolve_source(ModelSettings.from_sources({"model_name": "digits"}, {}))
    assert (by_alias.version, by_alias.alias, by_alias.run_id) == ("1", "champion", registry.run_a)
    assert by_alias.pinned_uri == "models:/digits/1"  # loads the version, not the moving alias
    user_config = {"model_name": "digits", "model_alias": "champion"}
    challenger = ModelSettings.from_sources(user_config, {"MODEL_ALIAS": "challenger"})
    assert (resolve_source(challenger).version, resolve_source(challenger).alias) == (
        "2",
        "challenger",
    )
    pinned = ModelSettings.from_sources(user_config, {"MODEL_VERSION": "2"})
    found = resolve_source(pinned)
    assert (found.version, found.alias, found.run_id) == ("2", None, registry.run_b)
    run = ModelSettings.from_sources(
        {**user_config, "model_version": 2}, {"MODEL_RUN_ID": registry.run_a}
    )
    found = resolve_source(run)
    # The run's newest registered version, loaded from the run itself.
    assert (found.name, found.version, found.alias, found.run_id) == (
        "digits",
        "3",
        None,
        registry.run_a,
    )
    assert found.pinned_uri == f"runs:/{registry.run_a}/model"
    renamed = ModelSettings.from_sources(user_config, {"MODEL_NAME": "shapes"})
    assert resolve_source(renamed).name == "shapes"


def test_a_pinned_run_never_registered_under_the_name_has_no_version(registry: Store) -> None:
    found = resolve_source(settings("shapes", model_run_id=registry.run_b))
    assert (found.name, found.version, found.run_id) == ("shapes", None, registry.run_b)


# ---------------------------------------------------------------------------------------------
# Loading, swapping, keeping


def test_the_alias_is_served_and_predicts_like_the_registered_model(registry: Store) -> None:
    images = load_splits("digits").x_test[:5].numpy()

    async def scenario(holder: ModelHolder) -> None:
        await holder.configure(settings())
        served = holder.model()
        assert served.ref == {"name": "digits", "version": "1", "alias": "champion"}
        results = await holder.predict([(image, 3) for image in images])
        own = model_registry.load_predictor("models:/digits/1").predict_proba(images)
        assert [r["class_index"] for r in results if r] == own.argmax(1).tolist()
        assert [r["model"]["version"] for r in results if r] == ["1"] * 5
        assert holder.batch_sizes == {5: 1}  # one forward pass for the batch
        info = holder.describe()
        assert (info["input_shape"], info["status"]) == ([1, 8, 8], "ready")
        assert info["classes"] == [str(d) for d in range(10)] and info["dataset"] == "digits"
        assert set(info) == set(ModelInfo.model_fields)  # what GET /model answers, all of it
        assert holder.health() == {"status": "ready", "model": served.ref}
        # For the log only: where it is stored, its run and metrics.
        internals = served.internals()
        assert (internals["model_uri"], internals["run_id"]) == ("models:/digits/1", registry.run_a)
        assert internals["metrics"]["test_accuracy"] == pytest.approx(registry.accuracy_a)
        assert (internals["device"], internals["precision"]) == ("cpu", "float32")

    with_holder(scenario)


def test_a_new_version_is_swapped_in_and_the_old_one_still_predicts(registry: Store) -> None:
    image = load_splits("digits").x_test[0].numpy()

    async def scenario(holder: ModelHolder) -> None:
        await holder.configure(settings())
        old = holder.model()
        await holder.configure(settings(model_version=2))
        new = holder.model()
        assert (new.source.version, new.source.alias, new.source.run_id) == (
            "2",
            None,
            registry.run_b,
        )
        assert new.predictor is not old.predictor
        # A batch that took the old model before the swap finishes on it.
        assert old.result(old.predictor.serve_proba(image[None])[0], 1)["model"]["version"] == "1"
        (result,) = await holder.predict([(image, 1)])
        assert result is not None and result["model"]["version"] == "2"
        assert holder.last_error is None

    with_holder(scenario)


def test_a_failed_switch_keeps_the_old_model_and_reports_the_error(registry: Store) -> None:
    async def scenario(holder: ModelHolder) -> None:
        await holder.configure(settings("broken"))
        kept = holder.model()
        # Version 2 loads but fails its self-test: never swapped in.
        await holder.configure(settings("broken", model_version=2))
        assert holder.model() is kept
        assert holder.last_error is not None and "invalid probabilities" in holder.last_error
        assert (holder.describe()["status"], holder.health()["status"]) == ("degraded", "degraded")
        holder.check_health()  # still serving, still healthy
        # A version the registry does not have: the same.
        await holder.configure(settings("broken", model_version=99))
        assert holder.model() is kept
        assert "MlflowException" in (holder.last_error or "")
        # The next switch that works clears the error.
        await holder.configure(settings("digits", model_version=2))
        assert (holder.model().source.name, holder.last_error) == ("digits", None)
        assert holder.describe()["status"] == "ready"

    with_holder(scenario)


def test_a_model_that_cannot_serve_is_refused_at_load_and_the_old_one_keeps_serving(
    registry: Store, serve_log: pytest.LogCaptureFixture
) -> None:
    """Version 3 of "broken" takes 2-channel images: its forward pass works, but no request
    could reach it (images decode to 1 or 3 channels), so every one would fail."""
    digit = load_splits("digits").x_test[0].numpy()
    failures = Failures()

    async def scenario(holder: ModelHolder) -> None:
        with pytest.raises(UnservableModelError, match="in_channels is 2"):
            await holder.configure(settings("broken", model_version=3))
        assert holder.served is None  # no replica starts with it
        await holder.configure(settings("broken"))
        kept = holder.model()
        await holder.configure(settings("broken", model_version=3))
        assert holder.model() is kept and holder.describe()["status"] == "degraded"
        (result,) = await holder.predict([(digit, 1)])
        assert result is not None and result["model"]["version"] == "1"
        assert [type(error) for error in failures.errors] == [UnservableModelError]

    with_holder(scenario, failures)
    (refusal,) = [r for r in serve_log.records if r.levelno == logging.ERROR]
    assert "models:/broken/3 cannot be served: in_channels is 2" in refusal.getMessage()


def test_a_first_load_of_a_pinned_model_that_is_not_there_fails(registry: Store) -> None:
    async def scenario(holder: ModelHolder) -> None:
        with pytest.raises(MlflowException):
            await holder.configure(settings(model_version=99))
        assert holder.served is None
        with pytest.raises(NoModelError):
            holder.health()
        with pytest.raises(NoModelError):
            await holder.predict([(np.zeros((1, 8, 8), np.uint8), 1)])

    with_holder(scenario)


@pytest.mark.parametrize("name", ["digits", "never-registered"])
def test_a_replica_started_before_any_promotion_waits_then_serves_the_first(
    registry: Store, name: str
) -> None:
    """A first deploy: the alias (or the whole registered model) is not there yet. The replica
    starts without a model, answers 503 (retry later) and passes Serve's health check, then
    serves what is promoted first."""

    async def scenario(holder: ModelHolder) -> None:
        await holder.configure(settings(name, model_alias="first-deploy", poll=0.05))
        assert holder.status() == "waiting" and holder.served is None
        holder.check_health()  # Serve keeps the replica
        for answer in (holder.health, holder.describe, holder.input_shape):
            with pytest.raises(NoModelError, match="no model is promoted yet") as refused:
                answer()
            assert isinstance(refused.value, UnavailableError)  # 503 with Retry-After
        if name == "never-registered":
            run_id = registry.run_a
            await asyncio.to_thread(model_registry.register_version, run_id, name, {})
        await asyncio.to_thread(model_registry.set_alias, name, "first-deploy", "1")
        await eventually(lambda: holder.served is not None, 60, "the first promotion")
        assert holder.status() == "ready" and holder.model().source.version == "1"
        assert holder.model().ref["alias"] == "first-deploy"

    with_holder(scenario)


def test_the_served_version_reached_another_way_is_relabelled_not_reloaded(
    registry: Store,
) -> None:
    async def scenario(holder: ModelHolder) -> None:
        await holder.configure(settings())
        predictor = holder.model().predictor
        await holder.configure(settings(model_version=1))
        assert holder.model().predictor is predictor
        assert holder.model().ref == {"name": "digits", "version": "1", "alias": None}
        # A pinned run: its newest version (3) is another version, so it loads.
        await holder.configure(settings(model_run_id=registry.run_a))
        assert holder.model().predictor is not predictor
        assert holder.model().ref == {"name": "digits", "version": "3", "alias": None}
        assert holder.model().internals()["model_uri"] == f"runs:/{registry.run_a}/model"

    with_holder(scenario)


def test_the_poller_follows_the_alias_and_keeps_serving_when_it_disappears(
    registry: Store,
) -> None:
    model_registry.set_alias("digits", "poll-test", "1")

    async def scenario(holder: ModelHolder) -> None:
        await holder.configure(settings(model_alias="poll-test", poll=0.05))
        assert holder.model().source.version == "1"
        await asyncio.to_thread(model_registry.set_alias, "digits", "poll-test", "2")
        await eventually(lambda: holder.model().source.version == "2", 60, "the alias move")
        assert holder.model().source.alias == "poll-test" and holder.last_error is None
        client = tracking.client()
        await asyncio.to_thread(client.delete_registered_model_alias, "digits", "poll-test")
        await eventually(lambda: holder.last_error is not None, 60, "the failed lookup")
        assert holder.model().source.version == "2"

    with_holder(scenario)


def test_images_decoded_for_another_shape_are_returned_unanswered(registry: Store) -> None:
    digit = load_splits("digits").x_test[0].numpy()
    other = np.zeros((3, 32, 32), dtype=np.uint8)

    async def scenario(holder: ModelHolder) -> None:
        await holder.configure(settings())
        answered, unanswered = await holder.predict([(digit, 3), (other, 3)])
        assert answered is not None and unanswered is None
        assert await holder.predict([(other, 3)]) == [None]
        assert holder.batch_sizes == {1: 1}  # no forward pass for the misfit alone

    with_holder(scenario)
