"""A model is validated when it is loaded (its spec, then a dry run on a blank image of its
input shape), and what the service reports about it is split: clients get what they need to
call it, the replica's log gets where it is stored and what went wrong. No registry here: the
models are built in memory."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
import requests
import torch
from fastapi import FastAPI
from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve._private.common import DeploymentID
from ray.serve.exceptions import DeploymentUnavailableError
from torch import nn

from app.datasets import dataset_info
from app.inference import Predictor
from app.model_registry import ModelRef
from app.models import ModelSpec, build_model
from app.serving.errors import install_error_handlers
from app.serving.schemas import ModelInfo
from app.serving.served_model import ServedModel, UnservableModelError, spec_problems
from tests.unit.test_serving_bodies import error_of, serving

DIGITS = ModelSpec.for_dataset("resnet18", dataset_info("digits"))
RUN_ID = "0123456789abcdef0123456789abcdef"
SOURCE = ModelRef("models:/digits@champion", RUN_ID, "digits", "4", "champion")


# What model_registry.lineage found for the run, with a field /model does not show.
LINEAGE = {
    "training_run_id": RUN_ID,
    "sweep": "tune-digits",
    "dataset": "digits",
    "dataset_digest": "ab" * 18,
    "git_commit": "c0ffee",
    "git_dirty": "false",
    "cost_usd": 0.25,
    "experiment_id": "7",
}


def served(model: nn.Module, spec: ModelSpec = DIGITS) -> ServedModel:
    predictor = Predictor(model.eval(), spec, torch.device("cpu"))
    return ServedModel(
        SOURCE, predictor, {"test_accuracy": 0.97}, "2026-01-01T00:00:00+00:00", LINEAGE
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"in_channels": 2, "mean": (0.5,) * 2, "std": (0.5,) * 2}, "in_channels is 2"),
        ({"in_channels": 4, "mean": (0.5,) * 4, "std": (0.5,) * 4}, "in_channels is 4"),
        ({"image_size": 0}, "image_size is 0"),
        ({"image_size": 100_000}, "image_size is 100000"),
        ({"num_classes": 11}, "num_classes is 11 for 10 class names"),
        ({"num_classes": 0, "classes": ()}, "num_classes is 0 for 0 class names"),
        ({"mean": (0.5, 0.5, 0.5)}, "mean and std have 3 and 1 values"),
        ({"std": (0.0,)}, "std finite and positive"),
        ({"mean": (float("nan"),)}, "mean must be finite"),
    ],
)
def test_a_spec_no_request_could_use_is_named(change: dict[str, Any], problem: str) -> None:
    assert spec_problems(DIGITS) == []
    (found,) = spec_problems(replace(DIGITS, **change))
    assert problem in found


def test_validation_refuses_an_odd_spec_before_any_forward_pass() -> None:
    calls: list[int] = []

    class Counting(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(len(x))
            return torch.zeros(len(x), 10)

    odd = replace(DIGITS, in_channels=2, mean=(0.5, 0.5), std=(0.5, 0.5))
    with pytest.raises(UnservableModelError, match=r"models:/digits/4 cannot be served: in_ch"):
        served(Counting(), odd).validate()
    assert calls == []
    served(Counting()).validate()  # the same model with a usable spec passes
    assert calls == [1]


def test_the_dry_run_wants_one_probability_per_class() -> None:
    """A network whose output does not match the class list softmaxes to a sum of 1 all the
    same; its ranked classes would be wrong or out of range."""
    nine = nn.Sequential(nn.Flatten(), nn.Linear(64, 9))
    with pytest.raises(UnservableModelError, match=r"returns \(1, 9\) probabilities"):
        served(nine).validate()


def test_a_forward_pass_that_raises_is_a_refusal_with_the_reason() -> None:
    wrong_input = nn.Sequential(nn.Flatten(), nn.Linear(65, 10))  # 8x8 images have 64 values
    with pytest.raises(UnservableModelError, match="cannot predict: RuntimeError"):
        served(wrong_input).validate()


def test_clients_get_what_they_need_and_the_log_gets_the_rest() -> None:
    model = served(build_model(DIGITS))
    public = model.describe()
    assert public == {
        "name": "digits",
        "version": "4",
        "alias": "champion",
        "dataset": "digits",
        "classes": [str(d) for d in range(10)],
        "input_shape": [1, 8, 8],
        "loaded_at": "2026-01-01T00:00:00+00:00",
        "lineage": {
            "training_run_id": RUN_ID,
            "sweep": "tune-digits",
            "sweep_run_id": None,
            "dataset": "digits",
            "dataset_digest": "ab" * 18,
            "git_commit": "c0ffee",
            "git_dirty": "false",
            "ray_job_id": None,
            "cost_usd": 0.25,
        },
    }
    assert set(ModelInfo.model_fields) == {*public, "status"}
    internals = model.internals()
    assert (internals["run_id"], internals["model_uri"]) == (RUN_ID, "models:/digits/4")
    assert internals["metrics"] == {"test_accuracy": 0.97}
    # The lineage's ids and digests are the clients'; where it is stored and how it scored not.
    text = json.dumps(public)
    assert "models:/" not in text and "resnet18" not in text and "0.97" not in text


def test_an_unavailable_deployment_is_503_without_its_name() -> None:
    api = FastAPI()
    install_error_handlers(api)

    @api.get("/down")
    async def down() -> None:
        raise DeploymentUnavailableError(DeploymentID("Classifier", "classifier"))

    with serving(api) as url:
        response = requests.get(f"{url}/down", timeout=10)
    assert error_of(response, 503) == "unavailable"
    assert "Classifier" not in response.text and "failed to deploy" not in response.text


@pytest.mark.parametrize("lost", [ActorDiedError(), ActorUnavailableError("unreachable", None)])
def test_a_replica_lost_mid_request_is_503_with_retry_after(lost: Exception) -> None:
    api = FastAPI()
    install_error_handlers(api)

    @api.get("/lost")
    async def replica_gone() -> None:
        raise lost

    with serving(api) as url:
        response = requests.get(f"{url}/lost", timeout=10)
    assert error_of(response, 503) == "unavailable"
    assert response.headers["Retry-After"] == "1"
    assert "Actor" not in response.text
