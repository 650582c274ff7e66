"""KubeRay manifests: valid against the KubeRay CRDs (strictly: no unknown field) and Kubernetes'
own schemas, generated files in sync with their sources, and the platform's policies in place."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from cluster.kuberay.serving_identity import with_serving_identities, without_promotion_login
from serve.throughput import FRONT_HAPROXY, HIGH_THROUGHPUT_ENV
from tests.cluster.clusterlib import (
    CRDS,
    EXAMPLE_VARS,
    KUBERAY,
    REPO,
    crd_errors,
    iter_pod_specs,
    kube_version,
    load_yaml,
    render_manifest,
    worker_group,
)

GENERATE = KUBERAY / "generate.py"
RAY_KINDS = {"RayCluster", "RayJob", "RayService", "RayCronJob"}
# Kubernetes objects; not the kustomize files, the JSON patch, the pipelines or the operator's
# Helm values.
NOT_OBJECTS = {"kustomization.yaml", "gcs-ft-patch.yaml", "pipelines.yaml", "operator-values.yaml"}
MANIFESTS = sorted(
    p for p in KUBERAY.rglob("*.yaml") if p.name not in NOT_OBJECTS and CRDS not in p.parents
)
RAYCLUSTER = load_yaml(KUBERAY / "raycluster" / "raycluster.yaml")
SETUP_LIB = (REPO / "cluster" / "scripts" / "setup" / "lib.sh").read_text()


def _docs(name: str) -> list[dict[str, Any]]:
    return render_manifest(KUBERAY / name)


def _rayjob(name: str) -> dict[str, Any]:
    (doc,) = _docs(f"rayjob-{name}.yaml")
    return doc


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid(path: Path) -> None:
    docs = render_manifest(path)
    assert docs
    for doc in docs:
        if doc["kind"] in RAY_KINDS:
            assert doc["apiVersion"] == "ray.io/v1"
            assert crd_errors(doc) == [], f"{path.name}: {doc['kind']} does not match its CRD"
        else:
            kubernetes_validate.validate(doc, kube_version(), strict=True)


def test_the_vendored_crds_are_the_pinned_operators() -> None:
    pinned = re.search(r'^KUBERAY_VERSION="\$\{KUBERAY_VERSION:-(\S+)\}"$', SETUP_LIB, re.M)
    assert pinned, "KUBERAY_VERSION not found in lib.sh"
    (vendored,) = re.findall(r"^- Version: v(\S+) ", (CRDS / "README.md").read_text(), re.M)
    assert vendored == pinned[1]
    assert {p.name for p in CRDS.glob("*.yaml")} == {
        f"ray.io_{kind.lower()}s.yaml" for kind in RAY_KINDS
    }


def test_every_ray_kind_has_a_manifest() -> None:
    kinds = {doc["kind"] for path in MANIFESTS for doc in render_manifest(path)}
    assert kinds >= RAY_KINDS


@pytest.mark.parametrize(
    ("where", "field"),
    [
        (["spec"], "enableInTreeAutoscalling"),
        (["spec", "workerGroupSpecs", 1], "maxReplica"),
        (["spec", "headGroupSpec", "template", "spec", "containers", 0], "imagePullPolicyy"),
    ],
)
def test_crd_validation_rejects_a_misspelt_field(where: list[Any], field: str) -> None:
    doc = copy.deepcopy(RAYCLUSTER)
    node = doc
    for key in where:
        node = node[key]
    node[field] = True
    assert any(field in error for error in crd_errors(doc))


def test_crd_validation_rejects_a_wrong_type() -> None:
    doc = copy.deepcopy(RAYCLUSTER)
    worker_group(doc["spec"], "gpu")["maxReplicas"] = "five"
    assert crd_errors(doc)


def test_generated_manifests_are_up_to_date() -> None:
    check = subprocess.run(
        [sys.executable, GENERATE, "--check"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr


def _expected_serve_config(path: Path) -> dict[str, Any]:
    """serve/config.yaml as the cluster must get it: without local working_dirs, on every
    interface."""
    config = yaml.safe_load(path.read_text())
    for app in config["applications"]:
        working_dir = (app.get("runtime_env") or {}).get("working_dir")
        if working_dir is not None and "://" not in str(working_dir):
            del app["runtime_env"]["working_dir"]
    config.setdefault("http_options", {})["host"] = "0.0.0.0"
    return config


def test_rayservice_serves_the_serve_config() -> None:
    (service,) = _docs("rayservice.yaml")
    served = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert served == _expected_serve_config(REPO / "serve" / "config.yaml")
    (app,) = [a for a in served["applications"] if a["name"] == "classifier"]
    assert app["import_path"] == "serve.service:app"
    assert app["route_prefix"] == "/"


def test_generator_drops_local_working_dirs_only(tmp_path: Path) -> None:
    serve_config = {
        "applications": [
            {
                "name": "classifier",
                "route_prefix": "/",
                "import_path": "serve.service:app",
                "runtime_env": {"working_dir": ".", "env_vars": {"A": "1"}},
            },
            {
                "name": "remote",
                "route_prefix": "/remote",
                "import_path": "x:app",
                "runtime_env": {"working_dir": "s3://bucket/code.zip"},
            },
        ]
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(serve_config))
    subprocess.run(
        [sys.executable, GENERATE, "--serve-config", config_path, "--out-dir", tmp_path],
        check=True,
        capture_output=True,
    )
    text = (tmp_path / "rayservice.yaml").read_text()
    assert "# Removed applications[classifier].runtime_env.working_dir '.'" in text
    assert "# http_options.host: 0.0.0.0 here, None in the source" in text
    served = yaml.safe_load(yaml.safe_load(text)["spec"]["serveConfigV2"])
    assert served == _expected_serve_config(config_path)
    assert served["applications"][0]["runtime_env"] == {"env_vars": {"A": "1"}}
    assert served["applications"][1]["runtime_env"]["working_dir"] == "s3://bucket/code.zip"


def test_serve_binds_loopback_on_a_laptop_and_every_interface_on_the_cluster() -> None:
    """Private by default; public is the cluster's explicit choice (its Services and the
    HAProxy of other nodes must reach each pod's Serve port)."""
    laptop = load_yaml(REPO / "serve" / "config.yaml")
    assert laptop["http_options"]["host"] == "127.0.0.1"
    (service,) = _docs("rayservice.yaml")
    assert yaml.safe_load(service["spec"]["serveConfigV2"])["http_options"]["host"] == "0.0.0.0"


def test_generator_fails_clearly_without_a_serve_config(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, GENERATE, "--serve-config", tmp_path / "none.yaml", "--out-dir", tmp_path],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode != 0
    assert "none.yaml not found" in run.stderr


def _image_path(path: Path) -> str:
    """Where the Ray image (cluster/docker/Dockerfile) has a file of this checkout: under its
    WORKDIR, when a COPY line copies the file's top folder there."""
    dockerfile = (REPO / "cluster" / "docker" / "Dockerfile").read_text()
    (workdir,) = re.findall(r"^WORKDIR (\S+)$", dockerfile, re.MULTILINE)
    top = path.relative_to(REPO).parts[0]
    assert re.search(rf"^COPY .* {top}/ {top}/$", dockerfile, re.MULTILINE), f"{top}/ not copied"
    assert os.access(path, os.X_OK), f"{path} is not executable"
    return f"{workdir}/{path.relative_to(REPO)}"


def test_rayservice_cluster_is_the_raycluster_sized_for_cpu_serving() -> None:
    (service,) = _docs("rayservice.yaml")
    serving = service["spec"]["rayClusterConfig"]
    (cpu,) = serving["workerGroupSpecs"]
    assert cpu["groupName"] == "cpu"
    assert cpu["minReplicas"] >= 1
    limits = cpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits
    (registered,) = {
        job["entrypoint"].split("--register-as ")[1].split()[0]
        for job in load_yaml(KUBERAY / "pipelines.yaml")["jobs"].values()
        if "--register-as" in job["entrypoint"]
    }
    head = copy.deepcopy(serving["headGroupSpec"])
    # Every serving pod serves the registered model, in Ray's high-throughput Serve mode, with
    # HAProxy behind the project's front wrapper as the image has it.
    front = _image_path(FRONT_HAPROXY)
    added = [{"name": "MODEL_NAME", "value": registered}]
    added += [{"name": k, "value": v} for k, v in HIGH_THROUGHPUT_ENV.items()]
    added += [{"name": "RAY_SERVE_HAPROXY_BINARY_PATH", "value": front}]
    for pod in (head, cpu):
        env = pod["template"]["spec"]["containers"][0]["env"]
        assert all(variable in env for variable in added), env
    for variable in added:
        head["template"]["spec"]["containers"][0]["env"].remove(variable)
    # ... and under the serving identities (test_identities.py checks which they are).
    cluster = render_manifest(KUBERAY / "raycluster" / "raycluster.yaml")[0]["spec"]
    assert head == with_serving_identities(cluster)["headGroupSpec"]


def test_token_auth_on_and_dashboard_private() -> None:
    spec = RAYCLUSTER["spec"]
    assert spec["authOptions"] == {"mode": "token", "secretName": "rayvision-ray-token"}
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert not head.get("enableIngress", False)


def test_autoscaler_v2_in_tree_with_idle_timeout() -> None:
    spec = RAYCLUSTER["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["version"] == "v2"
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    head_env = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "RAY_enable_autoscaler_v2", "value": "1"} in head_env
    # Autoscaler v2 replaces failed Ray nodes instead of restarting their pods.
    assert all(pod["restartPolicy"] == "Never" for pod in iter_pod_specs(spec))


def test_gpu_worker_group_is_one_gpu_per_pod_zero_to_five_on_spot() -> None:
    gpu = worker_group(RAYCLUSTER["spec"], "gpu")
    assert (gpu["minReplicas"], gpu["maxReplicas"], gpu["replicas"]) == (0, 5, 0)
    pod = gpu["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"]["eks.amazonaws.com/capacityType"] == "SPOT"
    tolerated = {(t["key"], t["value"], t["effect"]) for t in pod["tolerations"]}
    assert ("nvidia.com/gpu", "true", "NoSchedule") in tolerated


def test_every_ray_pod_has_resources_and_runs_unprivileged() -> None:
    for pod in iter_pod_specs(RAYCLUSTER["spec"]):
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        # Guaranteed QoS (cpu and memory); disk is requested low and capped higher, since
        # logs and spilled objects grow only under load.
        requests = dict(container["resources"]["requests"])
        limits = dict(container["resources"]["limits"])
        disk = [float(q.pop("ephemeral-storage").removesuffix("Gi")) for q in (requests, limits)]
        assert disk[0] <= disk[1]
        assert requests == limits
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["image"] == "${RAYVISION_IMAGE}"


def test_jobs_on_the_shared_cluster_select_it() -> None:
    for name in ("train", "evaluate-promote"):
        spec = _rayjob(name)["spec"]
        assert spec["clusterSelector"] == {"ray.io/cluster": RAYCLUSTER["metadata"]["name"]}
        assert "rayClusterSpec" not in spec
        assert spec["activeDeadlineSeconds"] > 0


def _deletions(spec: dict[str, Any]) -> dict[str, dict[str, int]]:
    """A RayJob's deletionRules as {end: {policy: ttl}}, refused where KubeRay 1.6.2's admission
    (ray-operator/controllers/ray/utils/validation.go, validateDeletionRules) refuses them."""
    assert "shutdownAfterJobFinishes" not in spec and "ttlSecondsAfterFinished" not in spec, (
        "KubeRay refuses these beside deletionRules"
    )
    found: dict[str, dict[str, int]] = {}
    for rule in spec["deletionStrategy"]["deletionRules"]:
        condition = dict(rule["condition"])
        ttl = condition.pop("ttlSeconds")
        ((kind, end),) = condition.items()  # exactly one of jobStatus, jobDeploymentStatus
        policies = found.setdefault(f"{kind}={end}", {})
        assert rule["policy"] not in policies, f"duplicate rule for {kind}={end}"
        policies[rule["policy"]] = ttl
        if "clusterSelector" in spec:
            assert rule["policy"] not in ("DeleteCluster", "DeleteWorkers")
    for end, policies in found.items():
        order = [
            policies[p] for p in ("DeleteWorkers", "DeleteCluster", "DeleteSelf") if p in policies
        ]
        assert order == sorted(order), f"{end}: workers, then cluster, then the job itself"
    return found


def test_tune_job_brings_its_own_cluster_and_removes_it() -> None:
    spec = _rayjob("tune")["spec"]
    assert "clusterSelector" not in spec
    assert spec["activeDeadlineSeconds"] > 0
    cluster_spec = render_manifest(KUBERAY / "raycluster" / "raycluster.yaml")[0]["spec"]
    # The long-lived cluster's, less upgradeStrategy and the promotion login (which only
    # evaluate-promote, on the long-lived cluster, uses: tests/cluster/test_identities.py).
    expected = without_promotion_login(
        {k: v for k, v in cluster_spec.items() if k != "upgradeStrategy"}
    )
    assert spec["rayClusterSpec"] == expected
    for policies in _deletions(spec).values():
        assert 0 < policies["DeleteCluster"] < policies["DeleteSelf"]


def test_a_redeploy_replaces_the_long_lived_clusters_pods() -> None:
    """KubeRay 1.6.2 leaves running pods on the old image unless upgradeStrategy is Recreate,
    and refuses the field on clusters a RayJob or RayService creates (validation.go,
    ValidateRayClusterUpgradeOptions): the embedded specs leave it out."""
    assert RAYCLUSTER["spec"]["upgradeStrategy"] == {"type": "Recreate"}
    (service,) = _docs("rayservice.yaml")
    assert "upgradeStrategy" not in service["spec"]["rayClusterConfig"]
    for path in sorted(KUBERAY.glob("ray*job-*.yaml")):
        (doc,) = render_manifest(path)
        spec = doc["spec"].get("jobTemplate", doc["spec"])
        assert "upgradeStrategy" not in spec.get("rayClusterSpec", {}), path.name


def test_job_drivers_run_in_their_own_on_demand_group_not_on_the_head() -> None:
    """A driver loads the dataset: not on the 2 GiB head beside the GCS, and not on spot nodes,
    whose reclaim would end the whole job. The group offers no CPU, so nothing else lands there,
    and the serving cluster has none."""
    head = RAYCLUSTER["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    driver = worker_group(RAYCLUSTER["spec"], "driver")
    assert driver["rayStartParams"]["num-cpus"] == "0"
    assert driver["template"]["spec"]["nodeSelector"] == {"rayvision.io/pool": "system"}
    assert driver["minReplicas"] == 0
    for path in sorted(KUBERAY.glob("ray*job-*.yaml")):
        (doc,) = render_manifest(path)
        spec = doc["spec"].get("jobTemplate", doc["spec"])
        wanted = json.loads(spec["entrypointResources"])
        assert wanted == {"driver": 1}, path.name
        assert "entrypointNumCpus" not in spec, path.name
    (service,) = _docs("rayservice.yaml")
    groups = [g["groupName"] for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
    assert "driver" not in groups


def test_finished_jobs_are_deleted_however_they_end() -> None:
    """The schedules create a RayJob a day: each is deleted after it ends, successful, failed,
    or never run, instead of piling up."""
    ends = {"jobStatus=SUCCEEDED", "jobStatus=FAILED", "jobDeploymentStatus=Failed"}
    for path in sorted(KUBERAY.glob("ray*job-*.yaml")):
        (doc,) = render_manifest(path)
        spec = doc["spec"].get("jobTemplate", doc["spec"])
        deletions = _deletions(spec)
        assert set(deletions) == ends, path.name
        assert all(policies["DeleteSelf"] > 0 for policies in deletions.values()), path.name


def test_job_submitters_carry_the_token_and_the_config() -> None:
    for path in sorted(KUBERAY.glob("ray*job-*.yaml")):
        (doc,) = render_manifest(path)
        spec = doc["spec"].get("jobTemplate", doc["spec"])
        (container,) = spec["submitterPodTemplate"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": RAYCLUSTER["spec"]["authOptions"]["secretName"],
            "key": "auth_token",
        }
        assert {"configMapRef": {"name": "rayvision-config"}} in container["envFrom"]
        assert container["image"] == EXAMPLE_VARS["RAYVISION_IMAGE"]


def test_entrypoints_call_the_jobs_with_their_contract_flags() -> None:
    train = _rayjob("train")["spec"]["entrypoint"].split()
    assert train[:2] == ["python", "jobs/train.py"]
    for flag in ("--dataset", "--model", "--use-gpu", "--storage-path", "--register-as"):
        assert flag in train
    # The new version becomes the challenger that evaluate-promote judges.
    assert train[train.index("--alias") + 1] == "challenger"
    assert train[train.index("--storage-path") + 1].startswith("$RAYVISION_STORAGE_PATH")
    tune = _rayjob("tune")["spec"]["entrypoint"].split()
    for flag in ("--num-samples", "--max-concurrent", "--scheduler", "--search"):
        assert flag in tune
    script = _rayjob("evaluate-promote")["spec"]["entrypoint"].split()[1]
    assert (REPO / script).is_file()
    assert "&&" not in " ".join([*train, *tune]), "&& would run in the submitter pod"


def test_schedules_run_the_pipelines_jobs() -> None:
    pipelines = load_yaml(KUBERAY / "pipelines.yaml")
    assert set(pipelines["schedules"]) == {
        "daily-train",
        "weekly-tune",
        "daily-evaluate-promote",
        "nightly-predict",
    }
    for name, schedule in pipelines["schedules"].items():
        (cron,) = _docs(f"raycronjob-{name}.yaml")
        assert cron["spec"]["schedule"] == schedule["schedule"]
        assert len(cron["spec"]["schedule"].split()) == 5
        job = _rayjob(schedule["job"])["spec"]
        template = cron["spec"]["jobTemplate"]
        # The same job, plus (train, tune) a --run-name per schedule slot: test_scheduled_jobs.py
        assert {**template, "entrypoint": job["entrypoint"]} == job
        assert template["entrypoint"].startswith(job["entrypoint"])


def _gcs_ft_cluster() -> dict[str, Any]:
    patch = load_yaml(KUBERAY / "raycluster-gcs-ft" / "gcs-ft-patch.yaml")
    return jsonpatch.apply_patch(RAYCLUSTER, patch)


def test_gcs_fault_tolerance_overlay() -> None:
    cluster = _gcs_ft_cluster()
    assert crd_errors(cluster) == []
    options = cluster["spec"]["gcsFaultToleranceOptions"]
    assert options["redisAddress"] == "${RAYVISION_REDIS_ADDRESS}"
    assert options["redisPassword"]["valueFrom"]["secretKeyRef"]["name"] == "rayvision-gcs-redis"
    assert cluster["spec"]["workerGroupSpecs"] == RAYCLUSTER["spec"]["workerGroupSpecs"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for kustomize) not installed")
def test_kustomize_builds_the_overlay_as_patched() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", KUBERAY / "raycluster-gcs-ft"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert yaml.safe_load(built) == _gcs_ft_cluster()
