"""Fixtures of the serving tests, loaded by their modules as a plugin (``pytest_plugins``):
``store``, a real (SQLite) registry built once a session (``Store`` says what it holds);
``registry``, a test pointed at it; ``serve_log``, the replica's log."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest
import torch

from app import model_registry
from app.datasets import dataset_info
from app.models import ModelSpec, build_model, cpu_state_dict
from tests.model_factory import digits_state, log_digits_model, log_untrained
from tests.unit.serving_support import Store


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    uri = f"sqlite:///{tmp_path_factory.mktemp('serving') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:  # only while building: tests use `registry`
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        run_a, accuracy_a = log_digits_model(digits_state(0, seed=0), "serving-tests")
        run_b, _ = log_digits_model(digits_state(0, seed=1), "serving-tests")
        nan_state = digits_state(0, seed=2)
        nan_state["fc.weight"] = torch.full_like(nan_state["fc.weight"], float("nan"))
        digits_spec = ModelSpec.for_dataset("resnet18", dataset_info("digits"))
        run_nan = log_untrained(digits_spec, nan_state)
        two_channels = replace(digits_spec, in_channels=2, mean=(0.5, 0.5), std=(0.25, 0.25))
        run_two = log_untrained(two_channels, cpu_state_dict(build_model(two_channels)))
        cifar_spec = ModelSpec.for_dataset("resnet18", dataset_info("cifar10"))
        run_cifar = log_untrained(cifar_spec, cpu_state_dict(build_model(cifar_spec)))
        registrations = {"digits": [run_a, run_b, run_a], "broken": [run_a, run_nan, run_two]}
        registrations["shapes"] = [run_a, run_cifar]
        for name, runs in registrations.items():
            for run_id in runs:
                model_registry.register_version(run_id, name, {})
            model_registry.set_alias(name, "champion", "1")
        model_registry.set_alias("digits", "challenger", "2")
    return Store(uri, run_a, run_b, accuracy_a)


@pytest.fixture
def registry(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    return store


@pytest.fixture
def serve_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The replica's log (Ray's "ray.serve" logger does not propagate to pytest's handler)."""
    monkeypatch.setattr(logging.getLogger("ray.serve"), "propagate", True)
    caplog.set_level(logging.INFO, "ray.serve")
    return caplog
