"""What the Classifier serves: its user_config, the MODEL_* environment over it, and which model
URI the settings name (run id > version > alias)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.serving.settings import ENV_OVERRIDES, ApiSettings, ModelSettings
from app.serving.source import settings_uri

RUN_ID = "0123456789abcdef0123456789abcdef"
OTHER_RUN_ID = "f" * 32


def test_the_environment_overrides_the_user_config() -> None:
    user_config = {"model_name": "shipped", "model_alias": "champion", "poll_interval_s": 5}
    env = {"MODEL_NAME": "other", "MODEL_ALIAS": "challenger", "MODEL_VERSION": "4"}
    settings = ModelSettings.from_sources(user_config, env)
    assert (settings.model_name, settings.model_alias, settings.model_version) == (
        "other",
        "challenger",
        4,
    )
    assert settings.poll_interval_s == 5  # what the environment does not name stays
    env = {"MODEL_RUN_ID": RUN_ID}
    assert ModelSettings.from_sources({"model_run_id": OTHER_RUN_ID}, env).model_run_id == RUN_ID


def test_empty_environment_values_change_nothing() -> None:
    user_config = {"model_name": "shipped", "model_version": 2}
    settings = ModelSettings.from_sources(user_config, dict.fromkeys(ENV_OVERRIDES, ""))
    assert (settings.model_name, settings.model_version, settings.model_run_id) == (
        "shipped",
        2,
        None,
    )


def test_only_the_model_variables_are_read() -> None:
    settings = ModelSettings.from_sources({}, {"POLL_INTERVAL_S": "1", "model_name": "lower"})
    assert (settings.poll_interval_s, settings.model_name) == (10.0, "digits-classifier")


@pytest.mark.parametrize(
    "env",
    [
        {"MODEL_VERSION": "latest"},
        {"MODEL_VERSION": "0"},
        {"MODEL_RUN_ID": "not-a-run-id"},
        {"MODEL_ALIAS": "has space"},
        {"MODEL_NAME": "../escape"},
    ],
)
def test_an_invalid_override_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        ModelSettings.from_sources({}, env)


def test_unknown_user_config_keys_are_refused() -> None:
    with pytest.raises(ValidationError, match="model_versoin"):
        ModelSettings.from_sources({"model_versoin": 3}, {})
    with pytest.raises(ValidationError, match="max_batch"):
        ApiSettings.model_validate({"max_batch": 3})


def test_a_run_id_wins_over_a_version_which_wins_over_the_alias() -> None:
    every = {"model_name": "m", "model_alias": "a", "model_version": 7, "model_run_id": RUN_ID}
    assert settings_uri(ModelSettings(**every)) == f"runs:/{RUN_ID}/model"
    del every["model_run_id"]
    assert settings_uri(ModelSettings(**every)) == "models:/m/7"
    del every["model_version"]
    assert settings_uri(ModelSettings(**every)) == "models:/m@a"


def test_the_environment_takes_part_in_the_precedence() -> None:
    """A version pinned in the user_config loses to a run id in the environment, and an alias
    in the environment loses to the pinned version."""
    pinned = {"model_name": "m", "model_version": 3}
    with_run = ModelSettings.from_sources(pinned, {"MODEL_RUN_ID": RUN_ID})
    assert settings_uri(with_run) == f"runs:/{RUN_ID}/model"
    with_alias = ModelSettings.from_sources(pinned, {"MODEL_ALIAS": "challenger"})
    assert settings_uri(with_alias) == "models:/m/3"


def test_api_limits_follow_the_settings() -> None:
    settings = ApiSettings(max_image_bytes=2048, max_pixels=100)
    assert (settings.limits.max_bytes, settings.limits.max_pixels) == (2048, 100)
