"""Deployment options have one home, serve/config.yaml: the decorators in serve/service.py set
none of them, and deploying from Python (``build_app``) applies all of them."""

from __future__ import annotations

import importlib
from typing import Any, cast

import pytest
from ray.serve import Application

from serve import service


def deployment_config(deployment: Any) -> Any:
    # Serve keeps a deployment's options here; its public properties cover only some of them.
    return deployment._deployment_config


def option_value(deployment: Any, key: str) -> Any:
    if key == "ray_actor_options":
        return deployment.ray_actor_options
    return getattr(deployment_config(deployment), key)


def test_the_decorators_set_no_option() -> None:
    for deployment in (service.Classifier, service.ClassifierAPI):
        assert deployment_config(deployment).user_configured_option_names == set()
    names = {cast(Any, d).name for d in (service.Classifier, service.ClassifierAPI)}
    assert names == {"Classifier", "ClassifierAPI"}  # the names config.yaml refers to


def test_build_app_applies_every_option_of_the_config() -> None:
    options = service.deployment_options(service.load_config())
    assert set(options) == {"Classifier", "ClassifierAPI"}
    assert options["Classifier"]["user_config"]["model_alias"] == "champion"
    for name, deployment in service.configured(options).items():
        assert cast(Any, deployment).name == name
        assert deployment_config(deployment).user_configured_option_names == set(options[name])
        for key, expected in options[name].items():
            actual = option_value(deployment, key)
            if key == "autoscaling_config":
                assert {k: getattr(actual, k) for k in expected} == expected
            elif key == "ray_actor_options":
                assert expected.items() <= actual.items()
            else:
                assert actual == expected, key
    assert isinstance(service.build_app(options), Application)


def test_an_edited_option_reaches_the_deployment() -> None:
    options = service.deployment_options(service.load_config())
    options["ClassifierAPI"]["user_config"]["max_batch_size"] = 1
    options["Classifier"].pop("autoscaling_config")
    options["Classifier"]["num_replicas"] = 1
    deployments = service.configured(options)
    assert deployments["ClassifierAPI"].user_config["max_batch_size"] == 1
    assert deployments["Classifier"].num_replicas == 1


def test_an_unknown_deployment_name_is_refused() -> None:
    with pytest.raises(ValueError, match="ModelServer"):
        service.configured({"ModelServer": {}})


def test_the_config_imports_the_application() -> None:
    (application,) = service.load_config()["applications"]
    module, attribute = application["import_path"].split(":")
    assert isinstance(getattr(importlib.import_module(module), attribute), Application)
