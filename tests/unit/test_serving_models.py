"""The served model and its holder, on real registered models in a real (SQLite) registry:
resolution of the settings, loading and self-test, swaps that keep the old model when they
fail, the poller, health, and input-shape changes between decoding and inference."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pytest
import requests
import torch
from fastapi import FastAPI, Request
from mlflow.exceptions import MlflowException
from PIL import Image

from app import model_registry, tracking
from app.datasets import dataset_info, load_splits
from app.models import ModelSpec, build_model, cpu_state_dict
from app.serving.bodies import read_image
from app.serving.errors import health_response, install_error_handlers
from app.serving.holder import ModelHolder, NoModelError
from app.serving.settings import ApiSettings, ModelSettings
from app.serving.shaped import INPUT_SHAPE_RETRIES, ShapedClassifier
from app.serving.source import resolve_source
from tests.model_factory import digits_state, log_digits_model
from tests.unit.test_serving_bodies import error_of, serving

pytestmark = pytest.mark.slow

T = TypeVar("T")
CPU = torch.device("cpu")
NEVER = 3600.0  # a poll interval no test waits for


@dataclass(frozen=True)
class Store:
    """A registry shared by this module's tests (none moves its aliases):
    digits v1 = run_a (@champion), v2 = run_b (@challenger), v3 = run_a again;
    broken v1 = run_a (@champion), v2 = a model with NaN weights (fails its self-test);
    shapes v1 = run_a (1x8x8), v2 = a CIFAR-shaped model (3x32x32)."""

    uri: str
    run_a: str
    run_b: str
    accuracy_a: float


def log_untrained(spec: ModelSpec, state: dict[str, torch.Tensor]) -> str:
    run_id = tracking.start_run("serving-tests", None, {"model": spec.architecture}, {})
    shape = (2, spec.image_size, spec.image_size, 3)[: 3 if spec.in_channels == 1 else 4]
    model_registry.log_model(run_id, state, spec, np.zeros(shape, dtype=np.uint8))
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    uri = f"sqlite:///{tmp_path_factory.mktemp('serving') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        run_a, accuracy_a = log_digits_model(digits_state(0, seed=0), "serving-tests")
        run_b, _ = log_digits_model(digits_state(0, seed=1), "serving-tests")
        nan_state = digits_state(0, seed=2)
        nan_state["fc.weight"] = torch.full_like(nan_state["fc.weight"], float("nan"))
        digits_spec = ModelSpec.for_dataset("resnet18", dataset_info("digits"))
        run_nan = log_untrained(digits_spec, nan_state)
        cifar_spec = ModelSpec.for_dataset("resnet18", dataset_info("cifar10"))
        run_cifar = log_untrained(cifar_spec, cpu_state_dict(build_model(cifar_spec)))
        registrations = {"digits": [run_a, run_b, run_a], "broken": [run_a, run_nan]}
        registrations["shapes"] = [run_a, run_cifar]
        for name, runs in registrations.items():
            for run_id in runs:
                model_registry.register_version(run_id, name, {})
            model_registry.set_alias(name, "champion", "1")
        model_registry.set_alias("digits", "challenger", "2")
        yield Store(uri, run_a, run_b, accuracy_a)


@pytest.fixture
def registry(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    return store


def with_holder(scenario: Callable[[ModelHolder], Coroutine[Any, Any, T]]) -> T:
    """Run ``scenario`` with a fresh holder on an event loop of its own; close it after."""

    async def run() -> T:
        holder = ModelHolder(CPU)
        try:
            return await scenario(holder)
        finally:
            await holder.close()

    return asyncio.run(run())


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


def settings(name: str = "digits", **values: Any) -> ModelSettings:
    return ModelSettings(model_name=name, poll_interval_s=values.pop("poll", NEVER), **values)


def colour_png(size: int = 32) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


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
        assert (info["model_uri"], info["run_id"]) == ("models:/digits/1", registry.run_a)
        assert info["metrics"]["test_accuracy"] == pytest.approx(registry.accuracy_a)
        assert (info["input_shape"], info["last_error"]) == ([1, 8, 8], None)
        assert holder.health() == {"status": "ok", "model": served.ref}

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
        assert holder.describe()["last_error"] == holder.last_error
        holder.check_health()  # still serving, still healthy
        # A version the registry does not have: the same.
        await holder.configure(settings("broken", model_version=99))
        assert holder.model() is kept
        assert "MlflowException" in (holder.last_error or "")
        # The next switch that works clears the error.
        await holder.configure(settings("digits", model_version=2))
        assert (holder.model().source.name, holder.last_error) == ("digits", None)

    with_holder(scenario)


def test_the_first_load_must_succeed(registry: Store) -> None:
    async def scenario(holder: ModelHolder) -> None:
        with pytest.raises(MlflowException):
            await holder.configure(settings(model_alias="nobody"))
        assert holder.served is None
        with pytest.raises(NoModelError):
            holder.health()
        with pytest.raises(NoModelError):
            await holder.predict([(np.zeros((1, 8, 8), np.uint8), 1)])

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
        assert holder.describe()["model_uri"] == f"runs:/{registry.run_a}/model"

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


# ---------------------------------------------------------------------------------------------
# Input-shape changes between decoding and inference


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


def test_health_is_503_without_a_model_or_when_it_fails_its_self_test(registry: Store) -> None:
    holder = ModelHolder(CPU)
    api = FastAPI()

    async def health() -> dict[str, Any]:
        return holder.health()

    @api.get("/health")
    async def health_route() -> Any:
        return await health_response(health())

    with serving(api) as url:
        empty = requests.get(f"{url}/health", timeout=10)
        assert error_of(empty, 503) == "unhealthy" and "NoModelError" in empty.json()["detail"]
        asyncio.run(holder.follow(settings()))
        ok = requests.get(f"{url}/health", timeout=10)
        assert ok.status_code == 200
        assert ok.json() == {"status": "ok", "model": holder.model().ref}
        with torch.no_grad():  # the loaded model breaks (a device fault, corrupted memory)
            for parameter in holder.model().predictor.model.parameters():
                parameter.fill_(float("nan"))
        broken = requests.get(f"{url}/health", timeout=10)
        assert error_of(broken, 503) == "unhealthy"
        assert "invalid probabilities" in broken.json()["detail"]
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
