"""Sizing a sweep's trials to the cluster's capacity, so that every concurrent trial fits.

Capacity is what the cluster has now plus what its autoscaler can add, not its current size:
a KubeRay cluster at rest (head with 0 CPUs, worker groups at ``minReplicas: 0``) has no CPU
until a trial asks for one. The autoscaler's node types come from Ray when it reports them
(``ray._private.state.state.get_cluster_config()``: a platform that reports its node groups to
the GCS) or else from ``RAYVISION_AUTOSCALER_NODE_TYPES`` (the deployment declares them, from the
same worker groups that configure the autoscaler): Ray 2.60's own autoscaler, v1 or v2, local or
KubeRay, reports none (``get_cluster_config()`` is None; checked on a local autoscaling cluster).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.config import ConfigError
from app.tune.config import TuneConfig

TRIAL_DRIVER_CPU = 0.1  # the Tune trial function only waits on its TorchTrainer
NODE_TYPES_ENV = "RAYVISION_AUTOSCALER_NODE_TYPES"
MIN_CPUS_PER_WORKER = 0.01


@dataclass(frozen=True)
class NodeType:
    """A kind of node the cluster has or can add: its Ray resources and how many at most."""

    resources: Mapping[str, float]
    max_count: int


@dataclass(frozen=True)
class Capacity:
    """What the cluster can hold at most: the nodes it has plus what its autoscaler can add.
    ``node_types`` is empty when the autoscaler's node types are unknown (then the totals are
    the cluster's current size)."""

    cpus: float
    gpus: float
    node_types: tuple[NodeType, ...] = ()
    source: str = "the cluster's current nodes"

    @property
    def autoscaling_known(self) -> bool:
        return bool(self.node_types)

    def describe(self) -> str:
        return f"{self.cpus:g} CPUs and {self.gpus:g} GPUs ({self.source})"


@dataclass(frozen=True)
class TrialPlan:
    max_concurrent: int
    cpus_per_worker: float
    cluster_cpus: float
    cluster_gpus: float


def parse_node_types(text: str, source: str = NODE_TYPES_ENV) -> tuple[NodeType, ...]:
    """``{"cpu": {"resources": {"CPU": 2}, "max_workers": 4}, ...}`` (the autoscaler's
    ``available_node_types`` shape) to node types."""
    try:
        raw = json.loads(text)
        types = tuple(
            NodeType({k: float(v) for k, v in t["resources"].items()}, int(t["max_workers"]))
            for t in raw.values()
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(
            f'{source}: expected {{"GROUP": {{"resources": {{"CPU": 2}}, "max_workers": 4}}}}, '
            f"got {text!r} ({exc})"
        ) from exc
    if any(t.max_count < 0 for t in types):
        raise ConfigError(f"{source}: max_workers must be >= 0")
    return types


def capacity_of(
    nodes: list[Mapping[str, Any]], node_types: tuple[NodeType, ...], source: str
) -> Capacity:
    """``nodes``: ``ray.nodes()``. With the autoscaler's node types, the capacity is the head's
    resources plus every node type at its maximum (never less than what is there now)."""
    alive = [n["Resources"] for n in nodes if n.get("Alive", True)]
    now = {r: sum(n.get(r, 0.0) for n in alive) for r in ("CPU", "GPU")}
    if not node_types:
        return Capacity(now["CPU"], now["GPU"])
    head: Mapping[str, float] = next((n for n in alive if "node:__internal_head__" in n), {})
    most = {
        r: head.get(r, 0.0) + sum(t.resources.get(r, 0.0) * t.max_count for t in node_types)
        for r in ("CPU", "GPU")
    }
    return Capacity(
        max(now["CPU"], most["CPU"]),
        max(now["GPU"], most["GPU"]),
        node_types,
        f"the cluster's nodes and what its autoscaler can add, from {source}",
    )


def _reported_node_types() -> tuple[NodeType, ...]:
    """The node groups Ray's GCS reports (None/empty on Ray 2.60's own autoscaler)."""
    from ray._private.state import state

    try:
        config = state.get_cluster_config()
    except Exception:
        return ()
    if config is None:
        return ()
    return tuple(
        NodeType(dict(group.resources), group.max_count if group.max_count >= 0 else 10**6)
        for group in config.node_group_configs
    )


def cluster_capacity(declared: tuple[NodeType, ...] = ()) -> Capacity:
    """The connected cluster's capacity (see the module's docstring); ``declared``: the
    autoscaler's node types from ``parse_node_types``, used when Ray reports none."""
    import ray

    reported = _reported_node_types()
    if reported:
        return capacity_of(ray.nodes(), reported, "Ray's cluster config")
    return capacity_of(ray.nodes(), declared, NODE_TYPES_ENV)


def _least_cpus(cfg: TuneConfig) -> float:
    """The fewest CPUs one trial can run on: its driver and every worker at the smallest share."""
    return cfg.num_workers * MIN_CPUS_PER_WORKER + TRIAL_DRIVER_CPU


def _worker_fits_a_node(worker: Mapping[str, float], capacity: Capacity) -> bool:
    return any(
        t.max_count > 0 and all(t.resources.get(r, 0.0) + 1e-9 >= v for r, v in worker.items())
        for t in capacity.node_types
    )


def plan_trials(cfg: TuneConfig, capacity: Capacity) -> TrialPlan:
    """How many trials run at once and how many CPUs each worker gets, so that every
    concurrent trial fits the cluster's capacity (too little room deadlocks worker-group
    start-up). An explicit ``--max-concurrent`` is trusted; a sweep that can never fit fails
    here, naming what is missing."""
    per_trial_gpus = cfg.num_workers if cfg.use_gpu else 0
    explicit_cpus = "cpus_per_worker" in cfg.model_fields_set
    cpus, gpus = capacity.cpus, capacity.gpus
    if cfg.max_concurrent is not None and not capacity.autoscaling_known:
        least_cpus = _least_cpus(cfg)
        if cpus + 1e-9 < least_cpus or gpus < per_trial_gpus:
            # Not even one trial fits the nodes there now and the autoscaler's node types are
            # unknown: trust the flag, and let the trials wait for the autoscaler's nodes.
            print(
                f"{cfg.max_concurrent} concurrent trials as asked, although {capacity.describe()} "
                "cannot hold one: waiting for the autoscaler",
                flush=True,
            )
            return TrialPlan(cfg.max_concurrent, cfg.cpus_per_worker, cpus, gpus)
    _refuse_what_can_never_fit(cfg, capacity, per_trial_gpus)
    if cfg.max_concurrent is not None:
        concurrent = cfg.max_concurrent
    else:
        cpu_room = cpus // (cfg.num_workers * cfg.cpus_per_worker + TRIAL_DRIVER_CPU)
        gpu_room = gpus // per_trial_gpus if per_trial_gpus else math.inf
        concurrent = int(max(1, min(cpu_room, gpu_room, cfg.num_samples)))
    cpus_per_worker = cfg.cpus_per_worker
    needed = concurrent * (cfg.num_workers * cpus_per_worker + TRIAL_DRIVER_CPU)
    if needed > cpus + 1e-9:
        if explicit_cpus:
            raise ConfigError(
                f"{concurrent} concurrent trials x {cfg.num_workers} workers x "
                f"{cpus_per_worker} CPUs (+{TRIAL_DRIVER_CPU} per trial) need {needed:g} CPUs; "
                f"the cluster can hold {capacity.describe()}. "
                "Lower --max-concurrent or --cpus-per-worker."
            )
        room = (cpus - concurrent * TRIAL_DRIVER_CPU) / (concurrent * cfg.num_workers)
        cpus_per_worker = math.floor(room * 100) / 100
        if cpus_per_worker < MIN_CPUS_PER_WORKER:
            raise ConfigError(
                f"{concurrent} concurrent trials of {cfg.num_workers} workers do not fit on "
                f"{capacity.describe()}. Lower --max-concurrent or --num-workers."
            )
    if per_trial_gpus and concurrent * per_trial_gpus > gpus:
        raise ConfigError(
            f"{concurrent} concurrent trials x {per_trial_gpus} GPUs exceed the "
            f"{capacity.describe()}. Lower --max-concurrent."
        )
    return TrialPlan(concurrent, cpus_per_worker, cpus, gpus)


def _refuse_what_can_never_fit(cfg: TuneConfig, capacity: Capacity, per_trial_gpus: int) -> None:
    """One trial must fit the capacity, and one worker must fit some node type."""
    missing = []
    if per_trial_gpus > capacity.gpus:
        missing.append(f"{per_trial_gpus} GPUs (one per worker)")
    least_cpus = _least_cpus(cfg)
    if least_cpus > capacity.cpus + 1e-9:
        missing.append(f"at least {least_cpus:g} CPUs")
    if missing:
        hint = (
            ""
            if capacity.autoscaling_known
            else f"; on an autoscaling cluster, declare its worker groups in {NODE_TYPES_ENV} "
            "or pass --max-concurrent"
        )
        raise ConfigError(
            f"a trial of {cfg.num_workers} workers can never run: it needs {' and '.join(missing)}"
            f", the cluster can hold at most {capacity.describe()}{hint}"
        )
    worker = {"CPU": cfg.cpus_per_worker} | ({"GPU": 1.0} if cfg.use_gpu else {})
    if capacity.autoscaling_known and not _worker_fits_a_node(worker, capacity):
        shapes = ", ".join(json.dumps(dict(t.resources)) for t in capacity.node_types)
        raise ConfigError(
            f"a worker needs {json.dumps(worker)} on one node, and no node type offers that "
            f"({shapes}). Lower --cpus-per-worker."
        )
