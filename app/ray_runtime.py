"""Reaching a Ray cluster from a job's driver, whichever way the job was started."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# Ray Train gives a worker group 60 s to start; on a busy 2-core laptop importing torch in
# several fresh worker processes can take longer. Applies to clusters this process starts.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
# Ray Train's workers print each line twice by default (its print patch tees to the console
# besides logging it there); Train passes this on to the controllers and workers it starts.
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# RAYVISION_VERBOSE=1 shows all of Ray's and MLflow's console output; without it the lines
# below, which a user cannot act on, stay in Ray's log files (session dir, logs/worker-*.out).
VERBOSE_ENV = "RAYVISION_VERBOSE"
CHATTER = re.compile(
    r"core_worker\.cc:\d+: Actor with class name: 'PreemptionWatcher'"
    r"|^Checkpoint successfully created at: "
    r"|^Reporting training result \d+: "
    r"|^(Requesting resources: |Attempting to start training worker group |Started training "
    r"worker group of size |- \(ip=\S+, pid=\d+\) world_rank=|Setting up process group for: "
    r"|Moving model to device: |Wrapping provided model in DistributedDataParallel)"
    r"|/mlflow/\S+: UserWarning: |^\s+(color_warning|warnings\.warn)\($"
    r"|Downloading artifacts: |^generated new fontManager$"
    r"| INFO mlflow\.pyfunc: Validating input example "
    r"|PYTHON worker processes have been started on node: "
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_console() -> None:
    """Keep the chatter above off this driver's console: the lines its workers send, and the
    warnings MLflow raises here. Ray 2.60's dispatcher of worker output, a private name."""
    if verbose():
        return
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\.|$)")
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    handlers = dict(dispatcher.handlers)
    printer: Callable[[dict[str, Any]], None] | None = handlers.get("ray_print_logs")
    if printer is None or getattr(printer, "rayvision_quiet", False):
        return

    def quiet(data: dict[str, Any]) -> None:
        lines = [line for line in data.get("lines", []) if not CHATTER.search(line)]
        if lines:
            printer({**data, "lines": lines})

    quiet.rayvision_quiet = True  # type: ignore[attr-defined]
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", quiet)


def ensure_ray() -> None:
    """Connect to the running cluster (inside ``ray job submit`` or after ``ray start``), or
    start a local one. Workers of a plain ``python jobs/x.py`` get the repo on their path."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        ray.init()  # a submitted job: its runtime env (working_dir) already carries the code
    else:
        pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        gone = None if os.environ.get("RAY_ADDRESS") else recorded_cluster_gone()
        if gone:
            # ray.init() would join it and fail after minutes of retries, and Ray's own helpers
            # (the state API, Ray Train's placement-group cleaner) would keep looking there.
            from ray._private.utils import get_ray_address_file

            Path(get_ray_address_file(None)).unlink(missing_ok=True)
            print(f"no Ray cluster answers at {gone}, where the last `ray start` here recorded "
                  "one: forgot that record, starting a local cluster", flush=True)  # fmt: skip
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    quiet_console()


def recorded_cluster_gone(timeout_s: float = 2.0) -> str | None:
    """The GCS address the last ``ray start`` on this machine recorded, when nothing listens
    there any more; None when none is recorded or it answers."""
    import socket

    from ray._private.services import find_bootstrap_address

    recorded = find_bootstrap_address(None)
    if not recorded:
        return None
    host, _, port = recorded.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return None
    except (OSError, ValueError):
        return recorded


def ray_job_id() -> str | None:
    import ray

    return os.environ.get("RAY_JOB_SUBMISSION_ID") or (
        ray.get_runtime_context().get_job_id() if ray.is_initialized() else None
    )


def host_train_coordinator_here() -> None:
    """Start Ray Train's autoscaling coordinator on this process's node (a sweep's driver: the
    head). Ray Train starts it, a detached actor, on the node of the first training that needs
    it; in a sweep that is a trial's worker node, which then never idles out, so an autoscaling
    cluster would keep that node (a GPU node, even) forever. Started here first, the trials
    find it by name. Ray 2.60's own function, from a private module: pinned with Ray."""
    import ray
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator,
    )

    ray.get(get_or_create_autoscaling_coordinator().__ray_ready__.remote())


def release_own_placement_groups() -> list[str]:
    """Remove the placement groups this job created that are still there; return their ids.

    For a sweep's driver once its trials are done (Tune has removed its own by then). A Train
    worker group's placement group whose controller was lost with its node (a spot node reclaimed
    under a sweep trial) stays CREATED after the job ends, reserving its CPUs or GPUs and so
    keeping a worker node up for good; measured on Ray 2.60 with the simulated cluster
    (tests/cluster/test_autoscaling_pipelines.py)."""
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group
    from ray.util.state import list_placement_groups

    job_id = ray.get_runtime_context().get_job_id()
    left = [
        group.placement_group_id
        for group in list_placement_groups(
            filters=[("creator_job_id", "=", job_id)], limit=10_000, raise_on_missing_output=False
        )
        if group.state != "REMOVED"
    ]
    for group_id in left:
        remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(group_id)))
    return left
