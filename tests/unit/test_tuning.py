from pathlib import Path

import pytest

from app.config import ConfigError, merge_config
from app.tune.config import TuneConfig
from app.tune.plan import Capacity, NodeType, capacity_of, parse_node_types, plan_trials
from app.tune.space import DEFAULT_SPACE, SearchSpace


def tune_config(**values: object) -> TuneConfig:
    return merge_config(TuneConfig, {k: str(v) for k, v in values.items()}, env={})


def test_default_space_is_the_missions() -> None:
    space = tune_config().space()
    assert space.describe()["lr"] == {"type": "loguniform", "low": 1e-4, "high": 1e-2}
    assert space.describe()["momentum"] == {"type": "uniform", "low": 0.8, "high": 0.99}
    assert set(space.dimensions) == set(DEFAULT_SPACE)


def test_space_file_overrides_and_may_tune_the_model(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(
        "lr: {type: loguniform, low: 0.001, high: 0.1}\n"
        "model: {type: choice, values: [resnet18, mobilenet_v3_small]}\n"
    )
    space = tune_config(space_file=path).space()
    assert set(space.dimensions) == {"lr", "model"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr: {type: loguniform, low: 0.1, high: 0.01}", "must be below"),
        ("lr: {type: gaussian, mean: 1}", "lr"),
        ("epochs_typo: {type: choice, values: [1]}", "not a tunable training field"),
        ("experiment: {type: choice, values: [a]}", "not a tunable training field"),
        ("momentum: {type: uniform, low: 0.5, high: 1.5}", "momentum=1.5"),
        ("model: {type: choice, values: [vgg16]}", "model='vgg16'"),
        ("- just a list", "non-empty mapping"),
    ],
)
def test_malformed_space_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        tune_config(space_file=path).space()


def test_points_to_evaluate_validated_against_the_space() -> None:
    cfg = tune_config(points_to_evaluate='[{"lr": 0.01, "batch_size": 32}]')
    assert cfg.warm_start(cfg.space()) == [{"lr": 0.01, "batch_size": 32}]
    with pytest.raises(ConfigError, match="not in the search space"):
        bad = tune_config(points_to_evaluate='[{"optimizer": "adamw"}]')
        bad.warm_start(bad.space())
    with pytest.raises(ConfigError, match="lr"):
        bad = tune_config(points_to_evaluate='[{"lr": -1}]')
        bad.warm_start(bad.space())


def test_trials_never_register_and_sweep_alias_defaults_to_challenger() -> None:
    cfg = tune_config(register_as="digits", epochs=4)
    assert cfg.alias == "challenger"
    base = cfg.trial_base()
    assert "register_as" not in base and "alias" not in base and base["epochs"] == 4
    assert tune_config().alias == "challenger"  # no register_as needed for the default


def test_concurrency_derived_from_the_cluster() -> None:
    plan = plan_trials(tune_config(num_workers=2, num_samples=10), Capacity(16, 0))
    assert plan.max_concurrent == 7 and plan.cpus_per_worker == 1.0  # 7 x (2 + 0.1) <= 16
    assert plan_trials(tune_config(num_samples=3), Capacity(64, 0)).max_concurrent == 3


def test_worker_cpus_shrink_so_concurrent_trials_fit_two_cores() -> None:
    plan = plan_trials(tune_config(num_workers=2, max_concurrent=2), Capacity(2, 0))
    assert plan.max_concurrent == 2
    needed = plan.max_concurrent * (2 * plan.cpus_per_worker + 0.1)
    assert 1.5 < needed <= 2


def test_explicit_cpus_that_cannot_fit_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"need 4\.2 CPUs"):
        plan_trials(tune_config(num_workers=2, max_concurrent=2, cpus_per_worker=1), Capacity(2, 0))


def test_gpu_trials_sized_by_gpus() -> None:
    plan = plan_trials(tune_config(use_gpu=True, num_workers=1, num_samples=100), Capacity(64, 4))
    assert plan.max_concurrent == 4
    with pytest.raises(ConfigError, match="GPUs"):
        plan_trials(tune_config(use_gpu=True, num_workers=2, max_concurrent=3), Capacity(64, 4))


def test_space_parse_rejects_empty_mapping() -> None:
    with pytest.raises(ConfigError, match="non-empty"):
        SearchSpace.parse({}, tune_config(), "inline")


# A KubeRay cluster at rest: the head advertises 0 CPUs, every worker group is at 0 replicas.
HEAD_AT_REST = [{"Alive": True, "Resources": {"CPU": 0.0, "node:__internal_head__": 1.0}}]
GROUPS = (
    '{"cpu": {"resources": {"CPU": 2}, "max_workers": 4},'
    ' "gpu": {"resources": {"CPU": 4, "GPU": 1}, "max_workers": 5}}'
)


def test_a_cluster_at_rest_is_sized_by_what_its_autoscaler_can_add() -> None:
    capacity = capacity_of(HEAD_AT_REST, parse_node_types(GROUPS), "test")
    assert (capacity.cpus, capacity.gpus) == (28, 5)
    plan = plan_trials(tune_config(num_samples=100, num_workers=1, use_gpu=True), capacity)
    assert plan.max_concurrent == 5 and plan.cpus_per_worker == 1.0  # 5 GPUs, 1 per trial
    plan = plan_trials(tune_config(num_samples=100, num_workers=2), capacity)
    assert plan.max_concurrent == 13  # 13 x (2 + 0.1) <= 28


def test_nodes_already_up_count_once() -> None:
    up = [*HEAD_AT_REST, {"Alive": True, "Resources": {"CPU": 2.0}}]
    dead = [*up, {"Alive": False, "Resources": {"CPU": 64.0}}]
    assert capacity_of(dead, parse_node_types(GROUPS), "test").cpus == 28
    assert capacity_of(dead, (), "").cpus == 2  # no autoscaler known: what is there


def test_explicit_max_concurrent_is_trusted_on_an_empty_cluster() -> None:
    """Ray reports no node types and the head has no CPU: the flag decides, trials wait."""
    empty = capacity_of(HEAD_AT_REST, (), "")
    plan = plan_trials(tune_config(use_gpu=True, max_concurrent=5), empty)
    assert (plan.max_concurrent, plan.cpus_per_worker) == (5, 1.0)
    with pytest.raises(ConfigError, match=r"autoscaler_node_types|AUTOSCALER_NODE_TYPES"):
        plan_trials(tune_config(), empty)  # nothing to size from and no flag


@pytest.mark.parametrize(
    ("groups", "values", "message"),
    [
        (
            '{"cpu": {"resources": {"CPU": 2}, "max_workers": 4}}',
            {"use_gpu": True, "num_workers": 1},
            "1 GPUs",
        ),
        (
            '{"cpu": {"resources": {"CPU": 2}, "max_workers": 4}}',
            {"cpus_per_worker": 3},
            r'a worker needs \{"CPU": 3',
        ),
        (
            '{"gpu": {"resources": {"CPU": 4, "GPU": 1}, "max_workers": 2}}',
            {"use_gpu": True, "num_workers": 3},
            "3 GPUs",
        ),
    ],
)
def test_a_sweep_that_can_never_fit_names_what_is_missing(
    groups: str, values: dict[str, object], message: str
) -> None:
    capacity = capacity_of(HEAD_AT_REST, parse_node_types(groups), "test")
    with pytest.raises(ConfigError, match=message):
        plan_trials(tune_config(max_concurrent=1, **values), capacity)


def test_node_types_are_validated() -> None:
    assert parse_node_types("{}") == ()
    assert parse_node_types(GROUPS)[1] == NodeType({"CPU": 4.0, "GPU": 1.0}, 5)
    with pytest.raises(ConfigError, match="max_workers"):
        parse_node_types('{"cpu": {"resources": {"CPU": 2}}}')
