"""Scheduled jobs on a cluster whose nodes come and go: every RayCronJob of a resumable job (train,
tune) gives it a --run-name that is stable within one schedule slot, so a resubmitted job resumes;
every RayJob tells the driver the autoscaler's worker groups, so a sweep on a cluster at rest sizes
itself from what the cluster can grow to (app/tune/plan.py)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from typing import Any

import pytest
import yaml

from app.tune.plan import NODE_TYPES_ENV, capacity_of, parse_node_types
from tests.cluster.clusterlib import KUBERAY, load_yaml, render_manifest

PIPELINES = load_yaml(KUBERAY / "pipelines.yaml")
RAYCLUSTER = load_yaml(KUBERAY / "raycluster" / "raycluster.yaml")


def _generate() -> Any:
    spec = importlib.util.spec_from_file_location("kuberay_generate", KUBERAY / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("kuberay_generate", module)
    spec.loader.exec_module(module)
    return module


def _cron(name: str) -> dict[str, Any]:
    (doc,) = render_manifest(KUBERAY / f"raycronjob-{name}.yaml")
    return doc


def _run_name(entrypoint: str, env: dict[str, str]) -> str:
    """The --run-name the submitter pod's shell hands to `ray job submit`."""
    words = subprocess.run(
        ["bash", "-c", f"printf '%s\\n' {entrypoint}"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return words[words.index("--run-name") + 1]


@pytest.mark.parametrize(("schedule", "job"), [("daily-train", "train"), ("weekly-tune", "tune")])
def test_a_scheduled_job_is_named_after_its_slot(schedule: str, job: str) -> None:
    entrypoint = _cron(schedule)["spec"]["jobTemplate"]["entrypoint"]
    env = {"RAYVISION_DATA_DIR": "/data", "RAYVISION_STORAGE_PATH": "s3://bucket"}
    first, again = _run_name(entrypoint, env), _run_name(entrypoint, env)
    assert first == again, "a resubmission within the slot must resume, not start over"
    now = dt.datetime.now(dt.UTC)
    slot = now.strftime("%Y%m%d") if job == "train" else now.strftime("%G-W%V")
    assert first == f"{schedule}-{slot}"
    assert shlex.split(PIPELINES["jobs"][job]["entrypoint"])[1] == f"jobs/{job}.py"


def test_evaluate_promote_is_not_given_a_run_name() -> None:
    entrypoint = _cron("daily-evaluate-promote")["spec"]["jobTemplate"]["entrypoint"]
    assert "--run-name" not in entrypoint


@pytest.mark.parametrize(
    ("cron", "slot"),
    [
        ("0 2 * * *", "%Y%m%d"),
        ("0 3 * * 6", "%G-W%V"),
        ("0 3 1 * *", "%Y%m"),
        ("0 * * * *", "%Y%m%dT%H"),
        ("*/15 * * * *", "%Y%m%dT%H%M"),
        ("0 3 * * 1-5", "%Y%m%d"),
    ],
)
def test_slot_per_cadence(cron: str, slot: str) -> None:
    assert _generate().slot_format(cron) == slot


def test_every_job_declares_the_autoscalers_worker_groups() -> None:
    generate = _generate()
    assert generate.NODE_TYPES_ENV == NODE_TYPES_ENV
    for name in PIPELINES["jobs"]:
        (job,) = render_manifest(KUBERAY / f"rayjob-{name}.yaml")
        env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
        types = parse_node_types(env[NODE_TYPES_ENV])
        groups = {g["groupName"]: g for g in RAYCLUSTER["spec"]["workerGroupSpecs"]}
        assert [t.max_count for t in types] == [g["maxReplicas"] for g in groups.values()]
        declared = json.loads(env[NODE_TYPES_ENV])
        assert declared["gpu"]["resources"] == {"CPU": 3, "GPU": 1}
        assert declared["cpu"]["resources"] == {"CPU": 2}  # 1500m, rounded up as KubeRay does
        # The head at rest (num-cpus 0) plus every group at its maximum.
        at_rest = [{"Alive": True, "Resources": {"CPU": 0.0, "node:__internal_head__": 1.0}}]
        capacity = capacity_of(at_rest, types, NODE_TYPES_ENV)
        assert (capacity.cpus, capacity.gpus) == (4 * 2 + 5 * 3, 5)
