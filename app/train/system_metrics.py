"""MLflow system metrics (CPU, memory, disk, network and, where NVML finds one, GPU
utilisation and memory) on a training run, sampled on each node by its first Train worker:
whether a job was starved or left its GPU idle, read beside its epochs in the MLflow UI."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

SAMPLING_INTERVAL_S = 5.0  # MLflow's default is 10 s; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL wins


@contextlib.contextmanager
def node_system_metrics(run_id: str) -> Iterator[None]:
    """Within it, the run gets this node's system metrics (``system/...``; prefixed with the
    node's rank, ``system/node1/...``, when the workers span several nodes). Only the first
    worker on each node samples; a restarted worker group continues the earlier steps."""
    import ray.train
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    context = ray.train.get_context()
    if context.get_local_rank() != 0:
        yield
        return
    several_nodes = context.get_world_size() != context.get_local_world_size()
    # Its start and stop lines, in every trial's console output, say nothing a user needs.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    monitor = SystemMetricsMonitor(
        run_id,
        sampling_interval=SAMPLING_INTERVAL_S,
        resume_logging=True,
        node_id=f"node{context.get_node_rank()}" if several_nodes else None,
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
