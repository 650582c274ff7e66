"""Sizing a sweep's trials to the cluster, so that every concurrent trial fits."""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.config import ConfigError
from app.tune.config import TuneConfig

TRIAL_DRIVER_CPU = 0.1  # the Tune trial function only waits on its TorchTrainer



@dataclass(frozen=True)
class TrialPlan:
    max_concurrent: int
    cpus_per_worker: float
    cluster_cpus: float
    cluster_gpus: float


def plan_trials(cfg: TuneConfig, cluster_cpus: float, cluster_gpus: float) -> TrialPlan:
    """How many trials run at once and how many CPUs each worker gets, so that every
    concurrent trial fits (too little room deadlocks worker-group start-up)."""
    per_trial_gpus = cfg.num_workers if cfg.use_gpu else 0
    explicit_cpus = "cpus_per_worker" in cfg.model_fields_set
    if cfg.max_concurrent is not None:
        concurrent = cfg.max_concurrent
    else:
        cpu_room = cluster_cpus // (cfg.num_workers * cfg.cpus_per_worker + TRIAL_DRIVER_CPU)
        gpu_room = cluster_gpus // per_trial_gpus if per_trial_gpus else math.inf
        concurrent = int(max(1, min(cpu_room, gpu_room, cfg.num_samples)))
    cpus_per_worker = cfg.cpus_per_worker
    needed = concurrent * (cfg.num_workers * cpus_per_worker + TRIAL_DRIVER_CPU)
    if needed > cluster_cpus + 1e-9:
        if explicit_cpus:
            raise ConfigError(
                f"{concurrent} concurrent trials x {cfg.num_workers} workers x "
                f"{cpus_per_worker} CPUs (+{TRIAL_DRIVER_CPU} per trial) need {needed:g} CPUs; "
                f"the cluster has {cluster_cpus:g}. Lower --max-concurrent or --cpus-per-worker."
            )
        room = (cluster_cpus - concurrent * TRIAL_DRIVER_CPU) / (concurrent * cfg.num_workers)
        cpus_per_worker = math.floor(room * 100) / 100
        if cpus_per_worker < 0.01:
            raise ConfigError(
                f"{concurrent} concurrent trials of {cfg.num_workers} workers do not fit on "
                f"{cluster_cpus:g} CPUs. Lower --max-concurrent or --num-workers."
            )
    if per_trial_gpus and concurrent * per_trial_gpus > cluster_gpus:
        raise ConfigError(
            f"{concurrent} concurrent trials x {per_trial_gpus} GPUs exceed the cluster's "
            f"{cluster_gpus:g} GPUs (an autoscaling cluster: set --max-concurrent explicitly)."
        )
    return TrialPlan(concurrent, cpus_per_worker, cluster_cpus, cluster_gpus)


