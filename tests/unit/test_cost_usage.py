"""Pricing what a run held: a node's rate from its Ray labels and the price table, a holder's
share of its node, a run's figures, and a sweep's totals from its trials."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.cost.prices import load_prices
from app.cost.record import sweep_cost
from app.cost.usage import Held, NodeRate, holders, node_rate, price

TABLE = load_prices()


def test_a_gpu_node_is_priced_as_the_instance_type_of_its_accelerator() -> None:
    labels = {"ray.io/node-group": "gpu", "ray.io/accelerator-type": "A10G"}
    rate = node_rate(labels, {"CPU": 3, "GPU": 1}, TABLE)
    g5 = next(i for i in TABLE.instances.values() if i.accelerator == "A10G")
    assert (rate.instance_type, rate.market) == (g5.name, "spot")
    assert rate.hourly_usd == g5.spot_hourly


def test_the_market_label_overrides_the_groups_market() -> None:
    labels = {"ray.io/node-group": "gpu", "ray.io/accelerator-type": "T4"}
    spot = node_rate(labels, {"CPU": 3, "GPU": 1}, TABLE)
    on_demand = node_rate({**labels, "ray.io/market-type": "on-demand"}, {"CPU": 3}, TABLE)
    assert on_demand.instance_type == spot.instance_type
    assert on_demand.hourly_usd == TABLE.instance(spot.instance_type).on_demand_hourly
    assert on_demand.hourly_usd > spot.hourly_usd


def test_a_pool_of_several_types_is_priced_at_its_dearest() -> None:
    rate = node_rate({"ray.io/node-group": "cpu"}, {"CPU": 1}, TABLE)
    pool = [TABLE.instance(name) for name in TABLE.ray_groups["cpu"].instance_types]
    assert len(pool) > 1
    assert rate.hourly_usd == max(i.spot_hourly for i in pool)


def test_a_node_of_no_priced_group_is_a_local_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYVISION_LOCAL_NODE_HOURLY_USD", "1.5")
    rate = node_rate({"ray.io/node-group": "laptop"}, {"CPU": 8}, load_prices())
    assert (rate.instance_type, rate.hourly_usd, rate.cpus) == ("local", 1.5, 8)
    assert node_rate({}, {"CPU": 8}, TABLE).hourly_usd == TABLE.local_hourly_usd


def test_a_holder_pays_its_larger_share_of_the_node() -> None:
    node = NodeRate("g5.xlarge", "spot", 0.45, cpus=3, gpus=1)
    assert node.share(Held("n", cpus=1, gpus=1)) == 1  # the GPU: the whole node
    assert node.share(Held("n", cpus=1.5, gpus=0)) == 0.5
    assert node.share(Held("n", cpus=0.1, gpus=0)) == pytest.approx(0.1 / 3)


def test_a_runs_cost_sums_its_holders_over_its_lifetime() -> None:
    rates = {
        "gpu-node": NodeRate("g5.xlarge", "spot", 0.72, cpus=3, gpus=1),
        "cpu-node": NodeRate("local", "local", 0.36, cpus=4, gpus=0),
    }
    held = [Held("gpu-node", 3, 1), Held("cpu-node", 1, 0), Held("cpu-node", 0.1, 0)]
    cost = price(held, rates, seconds=1800, table=TABLE)
    assert cost.cpu_seconds == pytest.approx(4.1 * 1800)
    assert cost.gpu_seconds == 1800
    assert cost.node_seconds == pytest.approx((1 + 0.25 + 0.025) * 1800)
    assert cost.cost_usd == pytest.approx(0.72 / 2 + 0.36 * 0.275 / 2)
    assert cost.instance_types == ("g5.xlarge:spot", "local")
    assert cost.price_table == TABLE.version


def test_a_holder_on_a_forgotten_node_is_priced_at_the_local_rate() -> None:
    cost = price([Held("gone", 2, 0)], {}, seconds=3600, table=TABLE)
    assert cost.node_seconds == 3600 and cost.cost_usd == TABLE.local_hourly_usd


def test_holders_are_read_back_from_the_runs_tags_and_a_bad_one_is_skipped() -> None:
    tags = {
        "cost.held.worker0": Held("a", 2, 1).tag_value(),
        "cost.held.trial": "b,0.1,0",
        "cost.held.worker1": "not a holder",
        "dataset": "digits",
    }
    assert sorted(holders(tags), key=lambda h: h.node_id) == [Held("a", 2, 1), Held("b", 0.1, 0)]


def _run(run_id: str, **metrics: float) -> SimpleNamespace:
    return SimpleNamespace(
        info=SimpleNamespace(run_id=run_id), data=SimpleNamespace(metrics=metrics)
    )


def test_a_sweeps_cost_is_the_sum_of_its_trials() -> None:
    trials = [
        _run("a", cost_usd=0.5, cpu_seconds=10, node_seconds=5),
        _run("b", cost_usd=0.25, cpu_seconds=4, node_seconds=2, cost_saved_usd=0.5),
        _run("c"),  # a trial that left no figures
    ]
    totals = sweep_cost(trials, best_run_id="a")
    assert totals["sweep_cost_usd"] == 0.75 and totals["sweep_cpu_seconds"] == 14
    assert totals["best_trial_cost_usd"] == 0.5
    assert totals["asha_saved_usd"] == 0.5
    assert totals["unpriced_trials"] == 1
