"""The platform's NetworkPolicies, flow by flow: what must get through does, what must not does
not. The policies are the rendered manifests (cluster/kuberay/networkpolicies.yaml as 02-cluster.sh
applies it, the MLflow chart as Helm renders it); the pods are built from the workload manifests
with the labels KubeRay 1.6.2 and the Job controller give them; tests/cluster/networkpolicy.py
evaluates Kubernetes' semantics. An allowed flow must hold by selectors alone; a denied one must
stay denied even where pod addresses match ipBlocks (the AWS VPC CNI gives pods VPC addresses)."""

from __future__ import annotations

import ipaddress
import itertools
import re
from typing import Any

import pytest
import yaml

from serve.laptop_env import METRICS_PORT, STATS_PORT
from tests.cluster.clusterlib import (
    CHART,
    KUBERAY,
    SETUP,
    load_yaml,
    render_chart,
    render_manifest,
    terraform_blocks,
)
from tests.cluster.networkpolicy import Cluster, External, Pod, allowed, network_policies
from tests.cluster.test_mlflow_chart import REQUIRED, _merge


def _found(pattern: str, text: str) -> str:
    match = re.search(pattern, text, re.M)
    assert match, pattern
    return match[1]


# The namespaces the setup scripts install into: the policies must name the same ones.
LIB = (SETUP / "lib.sh").read_text()
RAY_NS = _found(r'^RAY_NAMESPACE="\$\{RAY_NAMESPACE:-(\S+)\}"$', LIB)
MLFLOW_NS = _found(r'^MLFLOW_NAMESPACE="\$\{MLFLOW_NAMESPACE:-(\S+)\}"$', LIB)
CLUSTER_SCRIPT = (SETUP / "02-cluster.sh").read_text()
OPERATOR_NS = _found(r"install kuberay-operator .*\\\n\s+--namespace (\S+)", CLUSTER_SCRIPT)
VPC_CIDR = terraform_blocks("variable")["vpc_cidr"]["default"]
RAYCLUSTER = load_yaml(KUBERAY / "raycluster" / "raycluster.yaml")
(RAYSERVICE,) = render_manifest(KUBERAY / "rayservice.yaml")
(TUNE_JOB,) = render_manifest(KUBERAY / "rayjob-tune.yaml")

# Ports, from the manifests where they name them, else Ray's defaults.
HEAD_PORTS = {
    p["name"]: p["containerPort"]
    for p in RAYCLUSTER["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
}
GCS, DASHBOARD, CLIENT = HEAD_PORTS["gcs-server"], HEAD_PORTS["dashboard"], HEAD_PORTS["client"]
SERVE = yaml.safe_load(RAYSERVICE["spec"]["serveConfigV2"])["http_options"]["port"]
# Every Ray port but Serve's: the head's named ones, the dashboard agent, the default worker port
# range's ends, and one of the random ports the raylet and object manager take.
RAY_PORTS = sorted({*HEAD_PORTS.values(), 52365, 10002, 19999, 41234} - {SERVE})
MLFLOW_VALUES = load_yaml(CHART / "values.yaml")
MLFLOW_PORT = MLFLOW_VALUES["server"]["port"]
DB_PORT = MLFLOW_VALUES["database"]["port"]

_ips = (str(ip) for ip in ipaddress.ip_network("10.40.64.0/18").hosts())  # a private subnet


def _pod(name: str, namespace: str, labels: dict[str, str]) -> Pod:
    return Pod(name, namespace, labels, next(_ips))


def _ray_pods(spec: dict[str, Any], cluster: str, *, rayservice: bool) -> dict[str, Pod]:
    """The pods of a RayCluster spec, two per worker group, labelled as KubeRay 1.6.2 does
    (common/pod.go labelPod and BuildPod): its labels, which the template's may override except
    cluster, node type and group, and ray.io/serve on the pods of a RayService's clusters."""
    groups = [("head", "headgroup", spec["headGroupSpec"])]
    groups += [("worker", g["groupName"], g) for g in spec["workerGroupSpecs"]]
    pods = {}
    for node_type, group, group_spec in groups:
        labels = {
            "ray.io/is-ray-node": "yes",
            "ray.io/identifier": f"{cluster}-{node_type}",
            "app.kubernetes.io/name": "kuberay",
            "app.kubernetes.io/created-by": "kuberay-operator",
            **group_spec["template"]["metadata"].get("labels", {}),
            "ray.io/cluster": cluster,
            "ray.io/node-type": node_type,
            "ray.io/group": group,
        }
        if rayservice:
            # The head starts out of the serve Service; the operator flips it when healthy.
            labels["ray.io/serve"] = "false" if node_type == "head" else "true"
        for replica in (0, 1) if node_type == "worker" else (0,):
            pods[f"{group}-{replica}"] = _pod(f"{cluster}-{group}-{replica}", RAY_NS, labels)
    return pods


def _submitter(rayjob: str, template: dict[str, Any]) -> Pod:
    """A RayJob's submitter: a pod of the Kubernetes Job named after the RayJob, labelled by the
    Job controller only (KubeRay 1.6.2 rayjob_controller.go adds nothing to its template)."""
    uid = "0b6a2c1e-5d4f-4a8e-9c7b-3e2f1a0d9c8b"
    labels = {
        **template.get("metadata", {}).get("labels", {}),
        "batch.kubernetes.io/job-name": rayjob,
        "job-name": rayjob,
        "batch.kubernetes.io/controller-uid": uid,
        "controller-uid": uid,
    }
    return _pod(f"{rayjob}-x2v9q", RAY_NS, labels)


TRAINING = _ray_pods(RAYCLUSTER["spec"], "rayvision", rayservice=False)
TUNE = _ray_pods(TUNE_JOB["spec"]["rayClusterSpec"], "rayvision-tune-x7k2p", rayservice=False)
SERVING = _ray_pods(RAYSERVICE["spec"]["rayClusterConfig"], "classifier-q8w4z", rayservice=True)
RAY_PODS = [*TRAINING.values(), *TUNE.values(), *SERVING.values()]


def _submitters() -> dict[str, Pod]:
    pods = {}
    for path in sorted(KUBERAY.glob("ray*job-*.yaml")):
        for doc in render_manifest(path):
            name, spec = doc["metadata"]["name"], doc["spec"]
            if doc["kind"] == "RayCronJob":
                # It names each RayJob it makes <name>-<random> (raycronjob_controller.go).
                name, spec = f"{name}-k4j8s", spec["jobTemplate"]
            pods[name] = _submitter(name, spec["submitterPodTemplate"])
    return pods


SUBMITTERS = _submitters()
OPERATOR = _pod(
    "kuberay-operator",
    OPERATOR_NS,
    # helm-chart/kuberay-operator/templates/deployment.yaml at v1.6.2, release kuberay-operator
    {f"app.kubernetes.io/{k}": "kuberay-operator" for k in ("name", "instance", "component")},
)
DNS = _pod(
    "coredns", "kube-system", {"k8s-app": "kube-dns", "eks.amazonaws.com/component": "coredns"}
)
STRANGER = _pod("shell", "default", {"app": "shell"})
DEBUG = _pod("debug", RAY_NS, {"run": "debug"})  # a `kubectl run` pod beside the Ray pods
ALB = External("alb", "10.40.1.20")  # public subnet (internet-facing: Serve)
INTERNAL_ALB = External("internal-alb", "10.40.70.5")  # private subnet (internal: MLflow)
RDS = External("rds", "10.40.130.7")
REDIS = External("elasticache", "10.40.131.9")
AWS_API = External("s3-sts-secretsmanager", "52.94.0.10")
IMDS = External("instance-metadata", "169.254.169.254")


def _mlflow_pods(objects: dict[str, dict[str, Any]]) -> tuple[Pod, Pod]:
    server = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    upgrade = objects["Job"]["spec"]["template"]["metadata"]["labels"]
    return _pod("mlflow", MLFLOW_NS, server), _pod("mlflow-db-upgrade", MLFLOW_NS, upgrade)


def _platform(mlflow_values: dict[str, Any]) -> tuple[Cluster, Pod, Pod]:
    objects = render_chart(mlflow_values)
    policies = network_policies(render_manifest(KUBERAY / "networkpolicies.yaml"), RAY_NS)
    policies += network_policies([objects["NetworkPolicy"]], MLFLOW_NS)
    return Cluster(policies), *_mlflow_pods(objects)


PLATFORM, MLFLOW, DB_UPGRADE = _platform(REQUIRED)

Flow = tuple[Any, Any, int, str]


def _flows(sources: Any, destinations: Any, ports: Any, protocol: str = "TCP") -> list[Flow]:
    return [
        (s, d, p, protocol)
        for s, d, p in itertools.product(sources, destinations, ports)
        if s is not d
    ]


MUST_ALLOW: dict[str, list[Flow]] = {
    "ray nodes of a cluster, every way, every Ray port": [
        *_flows(TRAINING.values(), TRAINING.values(), RAY_PORTS),
        *_flows(TUNE.values(), TUNE.values(), RAY_PORTS),
        # Serve's port too: one pod's HAProxy forwards to replicas on the others.
        *_flows(SERVING.values(), SERVING.values(), [*RAY_PORTS, SERVE]),
    ],
    "operator -> heads' dashboard": _flows(
        [OPERATOR],
        [TRAINING["headgroup-0"], TUNE["headgroup-0"], SERVING["headgroup-0"]],
        [DASHBOARD],
    ),
    "operator -> serving head's proxy health": _flows(
        [OPERATOR], [SERVING["headgroup-0"]], [SERVE]
    ),
    "submitters -> the shared training head's dashboard": _flows(
        SUBMITTERS.values(), [TRAINING["headgroup-0"]], [DASHBOARD]
    ),
    "tune submitter -> its own cluster's dashboard": _flows(
        [SUBMITTERS["rayvision-tune"]], [TUNE["headgroup-0"]], [DASHBOARD]
    ),
    "ALB -> Serve on every serving pod": _flows([ALB], SERVING.values(), [SERVE]),
    "ray pods -> MLflow": _flows(RAY_PODS, [MLFLOW], [MLFLOW_PORT]),
    "ray pods -> S3, STS, the Kubernetes API": _flows(RAY_PODS, [AWS_API], [443]),
    "everyone in rayvision and mlflow -> DNS": [
        flow
        for proto in ("UDP", "TCP")
        for flow in _flows(
            [*RAY_PODS, *SUBMITTERS.values(), DEBUG, MLFLOW, DB_UPGRADE], [DNS], [53], proto
        )
    ],
    "training head -> ElastiCache (GCS fault tolerance)": _flows(
        [TRAINING["headgroup-0"]], [REDIS], [6379]
    ),
    "MLflow's ALB -> MLflow": _flows([INTERNAL_ALB], [MLFLOW], [MLFLOW_PORT]),
    "MLflow -> RDS": _flows([MLFLOW, DB_UPGRADE], [RDS], [DB_PORT]),
    "MLflow -> S3, Secrets Manager, STS": _flows([MLFLOW, DB_UPGRADE], [AWS_API], [443]),
}

MUST_DENY: dict[str, list[Flow]] = {
    "another namespace -> any Ray port": _flows([STRANGER], RAY_PODS, RAY_PORTS),
    "a stray pod in rayvision -> heads, MLflow, the internet": _flows(
        [DEBUG],
        [TRAINING["headgroup-0"], SERVING["headgroup-0"], MLFLOW, AWS_API],
        [DASHBOARD, GCS, MLFLOW_PORT, 443],
    ),
    "ALB -> HAProxy stats and metrics, the dashboard, Ray": _flows(
        [ALB, INTERNAL_ALB], SERVING.values(), [STATS_PORT, METRICS_PORT, *RAY_PORTS]
    ),
    "another namespace -> HAProxy stats and metrics": _flows(
        [STRANGER], SERVING.values(), [STATS_PORT, METRICS_PORT]
    ),
    "ALB -> training pods": _flows([ALB], [*TRAINING.values(), *TUNE.values()], [SERVE, DASHBOARD]),
    "serving -> training": _flows(
        SERVING.values(), [*TRAINING.values(), *TUNE.values()], [DASHBOARD, GCS, CLIENT, 41234]
    ),
    "training -> serving": _flows(
        [*TRAINING.values(), *TUNE.values()], SERVING.values(), [DASHBOARD, GCS, SERVE]
    ),
    "submitters -> serving head, workers, MLflow, the internet": _flows(
        SUBMITTERS.values(),
        [SERVING["headgroup-0"], TRAINING["gpu-0"], MLFLOW, AWS_API],
        [DASHBOARD, SERVE, MLFLOW_PORT, 443],
    ),
    "operator -> Ray ports other than its own": [
        *_flows([OPERATOR], [TRAINING["headgroup-0"], SERVING["headgroup-0"]], [GCS, CLIENT]),
        *_flows([OPERATOR], [TRAINING["cpu-0"], SERVING["cpu-0"]], [DASHBOARD, GCS]),
    ],
    "pods -> the instance metadata": _flows([*RAY_PODS, MLFLOW, DB_UPGRADE], [IMDS], [80, 443]),
    "pods -> plain HTTP and other ports out": _flows(
        [*RAY_PODS, MLFLOW], [AWS_API], [80, 8080, 6379]
    ),
    "only the long-lived training head -> ElastiCache": _flows(
        [TUNE["headgroup-0"], SERVING["headgroup-0"], TRAINING["cpu-0"], MLFLOW], [REDIS], [6379]
    ),
    "MLflow -> Ray pods, RDS on other ports": [
        *_flows([MLFLOW], RAY_PODS, [DASHBOARD, SERVE]),
        *_flows([MLFLOW], [RDS], [3306, 6379]),
    ],
    "the database upgrade job serves nothing to another namespace": _flows(
        [STRANGER, SERVING["cpu-0"]], [DB_UPGRADE], [22, 8080]
    ),
}


def _name(endpoint: Pod | External) -> str:
    return endpoint.name


@pytest.mark.parametrize("case", MUST_ALLOW, ids=str)
def test_the_platforms_flows_get_through(case: str) -> None:
    blocked = [
        f"{_name(s)} -> {_name(d)}:{p}/{proto}"
        for s, d, p, proto in MUST_ALLOW[case]
        if not allowed(PLATFORM, s, d, p, proto)
    ]
    assert MUST_ALLOW[case]
    assert blocked == []


@pytest.mark.parametrize("case", MUST_DENY, ids=str)
def test_everything_else_is_denied(case: str) -> None:
    through = [
        f"{_name(s)} -> {_name(d)}:{p}/{proto}"
        for s, d, p, proto in MUST_DENY[case]
        if allowed(PLATFORM, s, d, p, proto, ipblock_matches_pods=True)
    ]
    assert MUST_DENY[case]
    assert through == []


def test_a_vpc_address_reaches_only_the_load_balanced_ports() -> None:
    """The ALB is only expressible as the VPC's CIDR, and pods have VPC addresses: on the VPC
    CNI any pod reaches Serve's port and MLflow's directly (as it could through the ALB), and
    not one port more."""
    for destination, port in [(SERVING["cpu-0"], SERVE), (MLFLOW, MLFLOW_PORT)]:
        assert allowed(PLATFORM, STRANGER, destination, port, ipblock_matches_pods=True)
        assert not allowed(PLATFORM, STRANGER, destination, port)
        assert not allowed(PLATFORM, STRANGER, destination, port + 1, ipblock_matches_pods=True)


def test_without_its_ingress_mlflow_answers_its_client_namespaces_only() -> None:
    platform, mlflow, _ = _platform(_merge(REQUIRED, {"ingress": {"enabled": False}}))
    assert allowed(platform, TRAINING["driver-0"], mlflow, MLFLOW_PORT)
    assert not allowed(platform, INTERNAL_ALB, mlflow, MLFLOW_PORT)
    assert not allowed(platform, STRANGER, mlflow, MLFLOW_PORT, ipblock_matches_pods=True)


def test_with_no_client_at_all_mlflow_answers_nobody() -> None:
    """An ingress rule with no peers would admit everyone: the chart must write none."""
    values = _merge(
        REQUIRED, {"ingress": {"enabled": False}, "networkPolicy": {"clientNamespaces": []}}
    )
    platform, mlflow, _ = _platform(values)
    for source in (TRAINING["driver-0"], STRANGER, INTERNAL_ALB):
        assert not allowed(platform, source, mlflow, MLFLOW_PORT, ipblock_matches_pods=True)
    assert allowed(platform, mlflow, RDS, DB_PORT)


def test_the_chart_values_move_the_policy() -> None:
    values = _merge(
        REQUIRED,
        {
            "database": {"port": 5433},
            "networkPolicy": {"vpcCidr": "10.7.0.0/16", "clientNamespaces": ["team-a"]},
        },
    )
    platform, mlflow, _ = _platform(values)
    team_a = _pod("notebook", "team-a", {"app": "notebook"})
    assert allowed(platform, team_a, mlflow, MLFLOW_PORT)
    assert not allowed(platform, TRAINING["driver-0"], mlflow, MLFLOW_PORT)
    assert allowed(platform, External("alb", "10.7.3.4"), mlflow, MLFLOW_PORT)
    assert not allowed(platform, INTERNAL_ALB, mlflow, MLFLOW_PORT)
    assert allowed(platform, mlflow, External("rds", "10.7.130.7"), 5433)
    assert not allowed(platform, mlflow, RDS, DB_PORT)


def test_the_chart_policy_can_be_turned_off() -> None:
    objects = render_chart(_merge(REQUIRED, {"networkPolicy": {"enabled": False}}))
    assert "NetworkPolicy" not in objects


def test_the_cidrs_are_terraforms_vpc() -> None:
    """The kuberay file cannot be templated with it (lib.sh's MANIFEST_VARS has no CIDR): its
    ipBlocks and the chart's default must be terraform's vpc_cidr default."""
    text = (KUBERAY / "networkpolicies.yaml").read_text()
    cidrs = set(re.findall(r"cidr: ([0-9./]+)", text)) - {"0.0.0.0/0"}
    assert cidrs == {VPC_CIDR}
    assert MLFLOW_VALUES["networkPolicy"]["vpcCidr"] == VPC_CIDR


def test_every_ray_namespace_pod_starts_denied() -> None:
    """A pod no policy names (a new component, a debug shell) gets nothing but DNS."""
    deny = [p for p in PLATFORM.policies if p["metadata"]["name"] == "default-deny"]
    assert [p["spec"] for p in deny] == [{"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}]
    assert allowed(PLATFORM, DEBUG, DNS, 53, "UDP")
    assert not allowed(PLATFORM, DEBUG, STRANGER, 8080, ipblock_matches_pods=True)
    assert not allowed(PLATFORM, STRANGER, DEBUG, 8080, ipblock_matches_pods=True)


def test_the_policies_are_applied_before_the_workloads() -> None:
    (call,) = re.findall(r"^apply_manifests (.*?[^\\])$", CLUSTER_SCRIPT, re.M | re.S)
    assert call.split()[0] == '"${KUBERAY_DIR}/networkpolicies.yaml"'


def test_a_serving_label_on_a_training_pod_would_move_it_to_the_serving_side() -> None:
    """The sides are told apart by ray.io/serve alone: check the selector really keys on it."""
    head = TRAINING["headgroup-0"]
    relabelled = Pod(head.name, head.namespace, {**head.labels, "ray.io/serve": "true"}, head.ip)
    assert allowed(PLATFORM, SERVING["cpu-0"], relabelled, GCS)
    assert not allowed(PLATFORM, SERVING["cpu-0"], TRAINING["headgroup-0"], GCS)
