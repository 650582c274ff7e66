"""The platform's Ray jobs on the simulated RayCluster (tests/cluster/autoscaling.py): a head with
0 CPUs, worker groups from 0, checkpoints on an S3 endpoint, a real MLflow server.

- The RayJobs generated from cluster/kuberay/pipelines.yaml (tune, train, evaluate-promote) are
  submitted as KubeRay's submitter pod submits them: their own entrypoint and runtime env, with
  $RAYVISION_* from the pod's environment. Workers scale up from zero for them and back to zero
  after; the sweep sizes itself on a cluster with no worker at all.
- A worker node lost mid-training (its raylet killed, as a spot reclaim without notice does):
  the run continues from its last checkpoint on a new node, as one MLflow run, every epoch logged
  once. So does a sweep's trial whose own node (its function and Train controller) is lost.

What the simulation changes in the entrypoints, and why: digits instead of CIFAR-10 (nothing can
be downloaded here), a few epochs and trials (2 cores), and no --use-gpu (the fake GPU nodes
advertise a GPU but have no CUDA device).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from mlflow import MlflowClient
from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
    _AutoscalingCoordinatorActor,
)
from ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client import (
    AUTOSCALING_REQUESTS_EXPIRE_TIME_S,
)

from cluster.kuberay.generate import DRIVER_RESOURCE
from tests.cluster.autoscaling import alive_workers, head_cpus, simulated_raycluster, state
from tests.cluster.clusterlib import KUBERAY, REPO, render_manifest
from tests.cluster.iam import (
    ARROW_BACKEND_PROBE,
    TEST_KMS_KEY_ARN,
    RecordingProxy,
    bucket_name,
    decisions,
    role_policies,
    s3_requests_to_authorizations,
)
from tests.cluster.local_ray import RAY, LocalRayCluster
from tests.conftest import MlflowServer
from tests.support import JobsApi, moto_s3, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

# The bucket and prefix of the deployment (02-cluster.sh: RAYVISION_STORAGE_PATH s3://BUCKET/ray),
# so that the Ray pods' S3 calls can be checked against their role in iam.tf.
BUCKET = bucket_name()
STORAGE_PREFIX = "ray"
RAY_PODS_KEY = "ray-pods"  # the access key of the Ray pods' IAM role (IRSA) here
# Every job's flags as pipelines.yaml has them, but for these.
SIMULATION = {"--dataset": "digits", "--batch-size": "64", "--num-samples": "2"}
# Back at rest within this after a job ends: what Ray Train asked the autoscaler for is released
# when its controller cancels the request, but that call times out after 5 s on a loaded machine
# (Train then logs "will still expire"), and so does a controller lost with its node: the request
# then lasts until it expires, checked on the coordinator's tick. Plus the idle timeout and room.
AT_REST_TIMEOUT_S = (
    AUTOSCALING_REQUESTS_EXPIRE_TIME_S + _AutoscalingCoordinatorActor.TICK_INTERVAL_S + 40
)
NOTICE_S = 10  # a spot interruption notice (AWS gives 120 s)


@dataclass
class SimulatedCluster:
    ray: LocalRayCluster
    s3: Any  # the test's own boto3 S3 client, straight to the endpoint (not recorded)
    recorder: RecordingProxy  # the endpoint the pods use: every request they make, recorded
    mlflow: MlflowClient
    submitter_env: dict[str, str]

    @property
    def jobs(self) -> JobsApi:
        return JobsApi(self.ray.dashboard_url, self.ray.token)

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3() as url:
        yield url


@pytest.fixture(scope="module")
def recorder(s3_endpoint: str) -> Iterator[RecordingProxy]:
    with RecordingProxy(s3_endpoint) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def simulated(
    s3_endpoint: str,
    recorder: RecordingProxy,
    mlflow_server: MlflowServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SimulatedCluster]:
    aws = {
        # The pods' IAM role on EKS; static keys for the test endpoint here.
        "AWS_ENDPOINT_URL": recorder.endpoint,
        "AWS_ACCESS_KEY_ID": RAY_PODS_KEY,
        "AWS_SECRET_ACCESS_KEY": "simulated",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="test-inspector",
        aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
        region_name=aws["AWS_DEFAULT_REGION"],
    )
    s3.create_bucket(Bucket=BUCKET)
    # The ConfigMap rayvision-config, which every pod (submitter included) gets via envFrom.
    config_map = {
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "RAYVISION_STORAGE_PATH": f"s3://{BUCKET}/{STORAGE_PREFIX}",
        "RAYVISION_DATA_DIR": str(tmp_path_factory.mktemp("data")),
    }
    bin_dir = Path(sys.executable).parent
    cluster = simulated_raycluster(
        tmp_path_factory.mktemp("ray"),
        workdir=REPO,
        env={
            **config_map,
            **aws,
            # The image's code and Python: this checkout and this environment.
            "PYTHONPATH": str(REPO),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_DEDUP_LOGS": "0",
        },
    )
    try:
        yield SimulatedCluster(
            cluster,
            s3,
            recorder,
            MlflowClient(mlflow_server.uri),
            {**cluster.client_env(), **config_map},
        )
    finally:
        cluster.stop()


def _rayjob(name: str) -> dict[str, Any]:
    (job,) = render_manifest(KUBERAY / f"rayjob-{name}.yaml")
    spec: dict[str, Any] = job["spec"]
    return spec


def _for_simulation(
    entrypoint: str,
    flags: dict[str, str],
    add: dict[str, str] | None = None,
    drop: tuple[str, ...] = ("--use-gpu",),
) -> str:
    """The entrypoint with the values of its ``flags`` replaced, ``add`` added and ``drop``
    removed; $VARS are left for the submitter's shell, as in the RayJob."""
    words = entrypoint.split()
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        takes_value = i + 1 < len(words) and not words[i + 1].startswith("--")
        if word in drop:
            i += 2 if takes_value else 1
            continue
        out.append("digits" if word == "cifar10" else word)
        if word in flags and takes_value:
            out.append(flags[word])
            i += 2
            continue
        i += 1
    return " ".join(out + [f"{flag} {value}" for flag, value in (add or {}).items()])


def _submit(cluster: SimulatedCluster, name: str, entrypoint: str) -> str:
    """`ray job submit` as the RayJob's submitter pod runs it; returns the submission id."""
    spec = _rayjob(name)
    env_vars = yaml.safe_load((REPO / "runtime_env.yaml").read_text())["env_vars"]
    runtime_env = {"env_vars": {**env_vars, **yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]}}
    # As on KubeRay the code is in the image (here: the nodes' working directory, this
    # checkout), not shipped with the job.
    submission_id = f"{name}-{secrets.token_hex(3)}"
    command = (
        f"{RAY} job submit --no-wait --address {cluster.ray.dashboard_url} "
        f"--runtime-env-json {shlex.quote(json.dumps(runtime_env))} "
        f"--entrypoint-resources {shlex.quote(spec['entrypointResources'])} "
        f"--submission-id {submission_id} -- {entrypoint}"
    )
    subprocess.run(
        ["bash", "-c", command],
        cwd=REPO,
        env=cluster.submitter_env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return submission_id


def _finish(cluster: SimulatedCluster, submission_id: str, timeout: float) -> list[int]:
    """Wait for the job to succeed; returns the counts of live workers with CPUs (not the
    driver's) seen while it ran."""
    seen: list[int] = []

    def finished() -> dict[str, Any] | None:
        seen.append(len(alive_workers(cluster.ray, "CPU")))
        info = cluster.jobs.info(submission_id)
        return info if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED") else None

    info = wait_for(finished, timeout, f"job {submission_id}", interval=1)
    logs = cluster.jobs.logs(submission_id)
    assert info["status"] == "SUCCEEDED", f"{info.get('message')}\n{logs[-4000:]}"
    # The driver ran in the driver group (entrypointResources), not on the head.
    nodes = {node["node_id"]: node for node in state(cluster.ray, "nodes")}
    assert DRIVER_RESOURCE in nodes[info["driver_node_id"]]["resources_total"]
    return seen


def _at_rest(cluster: SimulatedCluster) -> None:
    try:
        wait_for(
            lambda: not alive_workers(cluster.ray),
            AT_REST_TIMEOUT_S,
            "workers back to 0",
            interval=1,
        )
    except TimeoutError as timed_out:
        raise AssertionError(f"{timed_out}; what holds them:\n{_holding(cluster)}") from None


def _holding(cluster: SimulatedCluster) -> str:
    """What keeps the live workers up: the actors on them, the placement groups not removed,
    and the autoscaler's own view (`ray status`)."""
    workers = {n["node_id"] for n in alive_workers(cluster.ray)}
    actors = [
        {k: a.get(k) for k in ("class_name", "name", "job_id", "node_id", "pid")}
        for a in state(cluster.ray, "actors")
        if a["state"] == "ALIVE" and a.get("node_id") in workers
    ]
    groups = [
        {k: g.get(k) for k in ("placement_group_id", "name", "state", "creator_job_id")}
        for g in state(cluster.ray, "placement_groups")
        if g["state"] != "REMOVED"
    ]
    status = subprocess.run(
        [RAY, "status", "--address", cluster.ray.gcs_address, "-v"],
        check=False,  # a diagnosis: what it says, even when it fails
        env=cluster.ray.client_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return f"workers: {workers}\nactors: {actors}\nplacement groups: {groups}\n{status.stdout}"


def _runs(cluster: SimulatedCluster, experiment: str) -> list[Any]:
    found = cluster.mlflow.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment}"
    return list(cluster.mlflow.search_runs([found.experiment_id]))


def _flag(entrypoint: str, flag: str) -> str:
    words = entrypoint.split()
    return words[words.index(flag) + 1]


def test_pipelines_run_on_a_cluster_at_rest_and_leave_it_at_rest(
    simulated: SimulatedCluster,
) -> None:
    cluster = simulated
    assert not alive_workers(cluster.ray), "the cluster must start at rest"
    assert head_cpus() == 0, "raycluster.yaml's head takes no tasks"

    # The weekly sweep first: it must size itself on a cluster with no worker at all.
    tune = _for_simulation(_rayjob("tune")["entrypoint"], {**SIMULATION, "--epochs": "2"})
    seen = _finish(cluster, _submit(cluster, "tune", tune), 900)
    assert max(seen) >= 1, f"no worker node was started for the sweep: {seen}"
    sweep_runs = _runs(cluster, _flag(tune, "--experiment"))
    parents = [r for r in sweep_runs if r.data.tags.get("sweep_parent") == "true"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(sweep_runs) == 1 + int(SIMULATION["--num-samples"])
    sweep = parents[0].info.run_name
    assert cluster.keys(f"{STORAGE_PREFIX}/tune/{sweep}/tuner.pkl"), "sweep state not on S3"

    # The nightly training: it registers the challenger that evaluate-promote promotes, so it
    # must clear the behavioural checks with a margin: 3 epochs at the default rate left one
    # class at recall 0.6 on this machine's CPU (0.8 is the bar), 5 at 0.02 reach about 0.91.
    train = _for_simulation(
        _rayjob("train")["entrypoint"],
        {**SIMULATION, "--epochs": "5", "--num-workers": "2"},
        add={"--lr": "0.02"},
    )
    seen = _finish(cluster, _submit(cluster, "train", train), 900)
    assert max(seen) >= 1, f"no worker node was started for training: {seen}"
    (train_run,) = _runs(cluster, _flag(train, "--experiment"))
    run_name = train_run.data.tags["ray_run_name"]
    checkpoints = cluster.keys(f"{STORAGE_PREFIX}/train/{run_name}/checkpoint_")
    assert checkpoints, "the training's checkpoints are not on S3"
    challenger = cluster.mlflow.get_model_version_by_alias("cifar10-classifier", "challenger")
    assert challenger.run_id == train_run.info.run_id

    evaluate = _for_simulation(_rayjob("evaluate-promote")["entrypoint"], {})
    assert evaluate.endswith("cifar10-classifier digits")
    _finish(cluster, _submit(cluster, "evaluate-promote", evaluate), 600)
    champion = cluster.mlflow.get_model_version_by_alias("cifar10-classifier", "champion")
    assert champion.version == challenger.version

    _at_rest(cluster)


def _raylet_of(pid: int) -> int:
    """A worker process's parent: the raylet of its node."""
    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert b"raylet" in Path(f"/proc/{parent}/cmdline").read_bytes(), "parent is not a raylet"
    return parent


@pytest.mark.parametrize(
    ("notice", "charged_to"),
    [
        # A node gone without notice: counted against --max-failures.
        (False, "worker group"),
        # A spot reclaim that Ray heard of first (the node drained for preemption, as autoscaler
        # v2 or a termination handler does): counted against --max-preemption-failures.
        (True, "preemption"),
    ],
)
def test_a_node_lost_mid_training_costs_one_restart_not_the_run(
    simulated: SimulatedCluster, notice: bool, charged_to: str
) -> None:
    cluster = simulated
    epochs = 5
    run_name, entrypoint = _own_run("train", {"--epochs": str(epochs), "--num-workers": "2"})
    submission_id = _submit(cluster, "train", entrypoint)
    checkpoints = f"{STORAGE_PREFIX}/train/{run_name}/checkpoint_"
    wait_for(lambda: cluster.keys(checkpoints), 600, "the first checkpoint on S3", interval=0.2)
    (worker, *_) = _actors(cluster, "RayTrainWorker")
    lost_node = worker["node_id"]
    raylet = _raylet_of(worker["pid"])
    if notice:
        # The notice, then the reclaim at its deadline (Ray counts a node as preempted only when
        # it dies after the deadline it was given).
        deadline = _drain_for_preemption(cluster, lost_node, NOTICE_S)
        wait_for(lambda: time.time() > deadline, NOTICE_S + 5, "the end of the spot notice")
    with contextlib.suppress(ProcessLookupError):  # a drained node Ray already emptied and ended
        os.kill(raylet, signal.SIGKILL)

    _finish(cluster, submission_id, 900)
    logs = cluster.jobs.logs(submission_id)
    assert "resumed from checkpoint after epoch" in logs, "the run started over"
    budget_lines = [line for line in logs.splitlines() if "Source:" in line or "reempt" in line]
    assert f"Source: {charged_to}" in logs, f"charged to the wrong budget: {budget_lines}"
    (run,) = _runs(cluster, run_name)
    assert run.info.status == "FINISHED"
    history = cluster.mlflow.get_metric_history(run.info.run_id, "epoch")
    assert sorted(m.value for m in history) == [float(e) for e in range(1, epochs + 1)], (
        "every epoch logged exactly once"
    )
    assert lost_node not in {n["node_id"] for n in alive_workers(cluster.ray)}
    _at_rest(cluster)


def _drain_for_preemption(cluster: SimulatedCluster, node_id: str, notice_s: int) -> float:
    """The notice of a spot reclaim, given to Ray as autoscaler v2 gives it; returns a time
    (epoch seconds) at or after its deadline."""
    subprocess.run(
        [
            RAY,
            "drain-node",
            "--address",
            cluster.ray.gcs_address,
            "--node-id",
            node_id,
            "--reason",
            "DRAIN_NODE_REASON_PREEMPTION",
            "--reason-message",
            "spot instance reclaimed",
            "--deadline-remaining-seconds",
            str(notice_s),
        ],
        env=cluster.ray.client_env(),
        check=True,
        capture_output=True,
        timeout=60,
    )
    return time.time() + notice_s


def _actors(cluster: SimulatedCluster, class_name: str) -> list[dict[str, Any]]:
    return [
        a
        for a in state(cluster.ray, "actors")
        if a["class_name"] == class_name and a["state"] == "ALIVE"
    ]


def _own_run(job: str, flags: dict[str, str]) -> tuple[str, str]:
    """A run of ``job`` of the test's own (its experiment and run name, returned first) with
    ``flags`` over the simulation's, registering nothing; and its entrypoint."""
    name = f"{job}-{secrets.token_hex(3)}"
    entrypoint = _for_simulation(
        _rayjob(job)["entrypoint"],
        {**SIMULATION, **flags},
        add={"--experiment": name, "--run-name": name},
        drop=("--use-gpu", "--register-as", "--alias", "--experiment"),
    )
    return name, entrypoint


def test_a_sweep_trial_survives_the_loss_of_its_node(simulated: SimulatedCluster) -> None:
    cluster = simulated
    epochs = 4
    sweep, entrypoint = _own_run("tune", {"--epochs": str(epochs), "--num-samples": "1"})
    submission_id = _submit(cluster, "tune", entrypoint)

    def checkpointed() -> bool:
        return any("/checkpoint_" in k for k in cluster.keys(f"{STORAGE_PREFIX}/tune/{sweep}-"))

    wait_for(checkpointed, 600, "the trial's first checkpoint on S3", interval=0.2)
    (trial, *_) = _actors(cluster, "ImplicitFunc")
    os.kill(_raylet_of(trial["pid"]), signal.SIGKILL)

    _finish(cluster, submission_id, 900)
    assert "resumed from checkpoint after epoch" in cluster.jobs.logs(submission_id)
    (child,) = [r for r in _runs(cluster, sweep) if "trial_id" in r.data.tags]
    assert child.info.status == "FINISHED"
    history = cluster.mlflow.get_metric_history(child.info.run_id, "epoch")
    assert sorted(m.value for m in history) == [float(e) for e in range(1, epochs + 1)]
    _at_rest(cluster)


def test_every_s3_call_of_ray_train_and_tune_is_one_the_ray_role_allows(
    simulated: SimulatedCluster,
) -> None:
    """Every S3 request the Ray pods made in this module's runs (Ray Train's and Tune's storage
    through pyarrow: checkpoints, sweep state, restores after a lost node), evaluated against
    the ray role of iam.tf. Last in the module: it checks what the others made the pods do."""
    checks = [
        check
        for check in s3_requests_to_authorizations(
            simulated.recorder.requests, kms_key_arn=TEST_KMS_KEY_ARN, kms_buckets=[BUCKET]
        )
        if check.resource != ARROW_BACKEND_PROBE
    ]
    assert {c.operation for c in checks} >= {"HeadBucket", "PutObject", "ListObjectsV2"}
    assert {c.principal for c in checks} == {RAY_PODS_KEY}
    policy = role_policies()["ray"]
    denied = {
        f"{check.operation} {check.resource}: {decision.reason}"
        for check, decision in decisions(checks, {RAY_PODS_KEY: policy})
        if not decision.allowed
    }
    assert denied == set()
