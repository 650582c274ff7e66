"""What a run held and what that cost: each holder of resources (a Ray Train worker, a Tune
trial's function) records on its MLflow run which node it ran on and what it held; when the
run ends, its holders are priced over the run's lifetime from the price table
(``app.cost.prices``) and the node's Ray labels.

Pricing a holder: the node's hourly rate times its share of the node, the larger of its CPU
share and its GPU share of the node's Ray resources (a GPU worker alone on a GPU node pays for
the whole node). The node's instance type comes from its labels: ``ray.io/node-group`` (the
KubeRay worker group, or the autoscaler's node type) names the group's candidate instance types
in the price table, ``ray.io/accelerator-type`` picks among GPU types, ``ray.io/market-type``
says spot or on-demand. A group with several candidate types of one accelerator (the CPU spot
pool) is priced at the dearest of them, so a figure errs high, never low. A node of no known
group is a local machine, priced at the table's local rate (zero unless configured).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from app.cost.prices import PriceTable, price_table

HELD_TAG_PREFIX = "cost.held."  # one tag per holder: "<node id>,<cpus>,<gpus>"
GROUP_LABEL = "ray.io/node-group"
ACCELERATOR_LABEL = "ray.io/accelerator-type"
MARKET_LABEL = "ray.io/market-type"
LOCAL = "local"


@dataclass(frozen=True)
class Held:
    """One holder's resources on one node."""

    node_id: str
    cpus: float
    gpus: float

    def tag_value(self) -> str:
        return f"{self.node_id},{self.cpus:g},{self.gpus:g}"

    @classmethod
    def parse(cls, value: str) -> Held:
        node_id, cpus, gpus = value.split(",")
        return cls(node_id, float(cpus), float(gpus))


@dataclass(frozen=True)
class NodeRate:
    instance_type: str
    market: str
    hourly_usd: float
    cpus: float  # the node's Ray resources, the denominators of a holder's share
    gpus: float

    def share(self, held: Held) -> float:
        cpu_share = held.cpus / self.cpus if self.cpus else 0.0
        gpu_share = held.gpus / self.gpus if self.gpus else 0.0
        return min(1.0, max(cpu_share, gpu_share))


@dataclass(frozen=True)
class RunCost:
    seconds: float
    cpu_seconds: float
    gpu_seconds: float
    node_seconds: float  # node-equivalents: each holder's share of its node, over the run
    cost_usd: float
    instance_types: tuple[str, ...]
    price_table: str

    def metrics(self) -> dict[str, float]:
        return {
            "cost_usd": self.cost_usd,
            "cpu_seconds": self.cpu_seconds,
            "gpu_seconds": self.gpu_seconds,
            "node_seconds": self.node_seconds,
        }

    def describe(self) -> str:
        return (
            f"${self.cost_usd:.4f} for {self.seconds:.0f} s: {self.cpu_seconds / 3600:.3f} "
            f"CPU-h, {self.gpu_seconds / 3600:.3f} GPU-h, {self.node_seconds / 3600:.3f} node-h "
            f"on {', '.join(self.instance_types) or 'no recorded node'} "
            f"(price table {self.price_table})"
        )

    def tags(self) -> dict[str, str]:
        return {"cost.price_table": self.price_table, "cost.nodes": ",".join(self.instance_types)}


def held_here(cpus: float, gpus: float) -> Held:
    """What the calling Ray process holds, on the node it runs on."""
    import ray

    return Held(ray.get_runtime_context().get_node_id(), cpus, gpus)


def held_tag(holder: str, held: Held) -> dict[str, str]:
    return {f"{HELD_TAG_PREFIX}{holder}": held.tag_value()}


def holders(tags: Mapping[str, str]) -> list[Held]:
    found = []
    for name, value in tags.items():
        if name.startswith(HELD_TAG_PREFIX):
            try:
                found.append(Held.parse(value))
            except ValueError:
                continue  # not ours to fail a run's closing over; the run stays unpriced there
    return found


def node_rate(
    labels: Mapping[str, str], resources: Mapping[str, float], table: PriceTable
) -> NodeRate:
    """The hourly rate of a node, from its Ray labels and the price table."""
    cpus, gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    group = table.ray_groups.get(labels.get(GROUP_LABEL, ""))
    if group is None:
        return NodeRate(LOCAL, LOCAL, table.local_hourly_usd, cpus, gpus)
    market = labels.get(MARKET_LABEL) or group.market
    candidates = [table.instance(name) for name in group.instance_types]
    accelerator = labels.get(ACCELERATOR_LABEL)
    matching = [c for c in candidates if accelerator and c.accelerator == accelerator]
    dearest = max(matching or candidates, key=lambda c: c.hourly(market))
    return NodeRate(dearest.name, market, dearest.hourly(market), cpus, gpus)


def cluster_node_rates(table: PriceTable | None = None) -> dict[str, NodeRate]:
    """Every node the cluster knows of (those that have died too, while the GCS remembers)."""
    import ray

    table = table or price_table()
    return {
        node["NodeID"]: node_rate(node.get("Labels") or {}, node.get("Resources") or {}, table)
        for node in ray.nodes()
    }


def price(
    held: Iterable[Held], rates: Mapping[str, NodeRate], seconds: float, table: PriceTable
) -> RunCost:
    """What the holders cost over ``seconds``. A holder on a node the cluster no longer knows
    is priced at the local rate with the CPU count it held as the node's size."""
    cpu_s = gpu_s = node_s = usd = 0.0
    types = set()
    for h in held:
        rate = rates.get(h.node_id) or NodeRate(
            LOCAL, LOCAL, table.local_hourly_usd, h.cpus, h.gpus
        )
        share = rate.share(h)
        cpu_s += h.cpus * seconds
        gpu_s += h.gpus * seconds
        node_s += share * seconds
        usd += rate.hourly_usd * share * seconds / 3600
        types.add(f"{rate.instance_type}:{rate.market}" if rate.market != LOCAL else LOCAL)
    return RunCost(seconds, cpu_s, gpu_s, node_s, usd, tuple(sorted(types)), table.version)


def run_cost(run: Any) -> RunCost:
    """The cost of an MLflow run from its holders' tags, from its start until now: priced as
    its holders let go (a run's end time can be earlier: logging its model closes it)."""
    table = price_table()
    end = int(time.time() * 1000)
    seconds = max(0.0, (end - run.info.start_time) / 1000)
    return price(holders(run.data.tags), cluster_node_rates(table), seconds, table)
