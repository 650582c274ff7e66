"""A trial that HyperOpt created after a sweep's last snapshot comes back, on resume, under the
id and with the config it had: it finds its MLflow run and checkpoints instead of starting over."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.hyperopt import HyperOptSearch

from app.tune.trial_ids import CountedTrialIds

SPACE = {"lr": tune.loguniform(1e-4, 1e-1), "momentum": tune.uniform(0.8, 0.99)}


def _trainable(config: dict[str, Any]) -> None:
    pass


def _search(generator: type[SearchGenerator]) -> SearchGenerator:
    """The sweep's search (app/tune/sweep.py), as Tune builds it before the first trial."""
    search = generator(ConcurrencyLimiter(HyperOptSearch(random_state_seed=7), max_concurrent=4))
    search.set_search_properties("val_accuracy", "max", SPACE)
    search.add_configurations({"sweep": {"run": _trainable, "num_samples": 6, "config": SPACE}})
    return search


def _resumed_trial(generator: type[SearchGenerator], tmp_path: Path) -> tuple[Any, Any]:
    """The trial created just after a snapshot, and the one the search restored from that
    snapshot creates next."""
    search = _search(generator)
    search.next_trial()
    search.next_trial()
    search.save_to_dir(str(tmp_path), "snapshot")
    lost = search.next_trial()  # the driver dies before the next snapshot
    restored = _search(generator)
    restored.restore_from_dir(str(tmp_path))
    return lost, restored.next_trial()


def test_the_lost_trial_comes_back_under_its_id_with_its_config(tmp_path: Path) -> None:
    lost, again = _resumed_trial(CountedTrialIds, tmp_path)
    assert again.trial_id == lost.trial_id
    assert again.config == lost.config


def test_rays_own_generator_gives_it_a_new_id(tmp_path: Path) -> None:
    """Why CountedTrialIds exists: the same config comes back, under a random new id."""
    lost, again = _resumed_trial(SearchGenerator, tmp_path)
    assert again.config == lost.config
    assert again.trial_id != lost.trial_id
