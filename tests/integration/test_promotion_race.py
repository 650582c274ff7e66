"""Registry races on a real MLflow store (SQLite, registry included): promotion evaluates the
challenger version it read and moves @champion only if @challenger still points there; a run
registered again (a resumed or resubmitted job) adds no version."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import app.promote
from app import model_registry, tracking
from tests.model_factory import digits_state, log_digits_model

pytestmark = [pytest.mark.integration]


@dataclass
class Store:
    uri: str
    good_run: str
    bad_run: str


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    uri = f"sqlite:///{tmp_path_factory.mktemp('promotion') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        good_run, _ = log_digits_model(digits_state(epochs=4), "promotion-race")
        bad_run, _ = log_digits_model(digits_state(epochs=0), "promotion-race")
        yield Store(uri, good_run, bad_run)


@pytest.fixture
def name(store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    monkeypatch.chdir(tmp_path)
    tracking.configure()
    return f"race-{uuid.uuid4().hex[:6]}"


def test_promotion_evaluates_the_version_it_read_and_refuses_if_the_alias_moved(
    store: Store, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep moves @challenger while promote evaluates: the version read at the start is the
    one evaluated (by version, not through the alias again), and @champion does not move."""
    champion = model_registry.register_version(store.good_run, name, {})
    read = model_registry.register_version(store.good_run, name, {})  # as good: would be promoted
    sneaked_in = model_registry.register_version(store.bad_run, name, {})  # never evaluated
    model_registry.set_alias(name, "champion", champion)
    model_registry.set_alias(name, "challenger", read)
    evaluated: list[str] = []
    real_evaluate = app.promote.evaluate

    def evaluate_while_a_sweep_moves_the_alias(cfg: Any, splits: Any = None) -> dict[str, Any]:
        model_registry.set_alias(name, "challenger", sneaked_in)  # the sweep registers its best
        evaluated.append(cfg.model_uri)
        return real_evaluate(cfg, splits)

    monkeypatch.setattr(app.promote, "evaluate", evaluate_while_a_sweep_moves_the_alias)
    cfg = app.promote.PromoteConfig(model_name=name)
    with pytest.raises(app.promote.PromotionRefusedError, match="moved") as refused:
        app.promote.promote(cfg)
    assert evaluated == [f"models:/{name}/{read}", f"models:/{name}/{champion}"]
    assert refused.value.results["challenger_version"] == read
    assert refused.value.results["promoted"] is False
    assert model_registry.alias_version(name, "champion") == champion

    # Undisturbed, the same promotion goes through, to the version it evaluated.
    monkeypatch.setattr(app.promote, "evaluate", real_evaluate)
    model_registry.set_alias(name, "challenger", read)
    assert app.promote.promote(cfg)["promoted"] is True
    assert model_registry.alias_version(name, "champion") == read


def test_a_champion_moved_during_evaluation_is_not_overwritten(
    store: Store, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    champion = model_registry.register_version(store.bad_run, name, {})
    challenger = model_registry.register_version(store.good_run, name, {})
    rollback = model_registry.register_version(store.good_run, name, {})
    model_registry.set_alias(name, "champion", champion)
    model_registry.set_alias(name, "challenger", challenger)
    real_evaluate = app.promote.evaluate

    def evaluate_during_a_rollback(cfg: Any, splits: Any = None) -> dict[str, Any]:
        model_registry.set_alias(name, "champion", rollback)  # an operator's forced rollback
        return real_evaluate(cfg, splits)

    monkeypatch.setattr(app.promote, "evaluate", evaluate_during_a_rollback)
    with pytest.raises(app.promote.PromotionRefusedError, match="@champion"):
        app.promote.promote(app.promote.PromoteConfig(model_name=name))
    assert model_registry.alias_version(name, "champion") == rollback


def test_registering_a_run_again_adds_no_version(store: Store, name: str) -> None:
    """A resumed run that had already finished, or a resubmitted job: no duplicate version,
    and the alias, moved on since, stays where it is."""
    assert model_registry.register_once(store.good_run, name, {}, "challenger") == ("1", True)
    other = model_registry.register_version(store.bad_run, name, {}, "challenger")
    assert model_registry.register_once(store.good_run, name, {}, "challenger") == ("1", False)
    assert len(tracking.client().search_model_versions(f"name = '{name}'")) == 2
    assert model_registry.alias_version(name, "challenger") == other


def test_resuming_a_finished_training_registers_nothing_new(store: Store, name: str) -> None:
    """A scheduled train job resubmitted after it finished (same --run-name): it neither trains
    again nor adds a version; nor does it need a Ray cluster to say so."""
    import ray

    from app.evaluation import PER_CLASS_TABLE
    from app.train.config import TrainConfig
    from app.train.driver import EVALUATION_DIR, RAY_RUN_NAME_TAG, fit

    run_name = f"daily-train-{name}"
    run_id = store.good_run  # a finished run with a logged model
    experiment = tracking.client().get_experiment(
        tracking.client().get_run(run_id).info.experiment_id
    )
    cfg = TrainConfig(
        run_name=run_name, register_as=name, alias="challenger", experiment=experiment.name
    )
    # What the first, finished attempt left: its final metrics, its table, its logged model.
    tracking.set_tags(run_id, {RAY_RUN_NAME_TAG: run_name})
    final = {"test_accuracy": 0.9, "test_macro_f1": 0.9, "val_accuracy": 0.9, "epoch": 1.0}
    buffer = tracking.MetricBuffer(run_id)
    buffer.log(final, step=1)
    buffer.flush()
    table = {"columns": ["class", "f1"], "data": [["0", 0.9]]}
    tracking.client().log_dict(run_id, table, f"{EVALUATION_DIR}/{PER_CLASS_TABLE}")
    first, _ = model_registry.register_once(run_id, name, {}, "challenger")

    outcome = fit(cfg)
    assert (outcome.run_id, outcome.registered_version) == (run_id, first)
    assert len(tracking.client().search_model_versions(f"name = '{name}'")) == 1
    assert not ray.is_initialized()
