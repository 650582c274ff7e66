"""The identities of the public serving cluster, apart from the training cluster's.

The RayService answers the internet, so nothing its pods hold may reach what training owns:
- its own Ray token: a Serve pod cannot submit jobs to the training cluster;
- its own MLflow user, READ only (cluster/scripts/setup/users.conf): it cannot register a model,
  move an alias or log a run;
- its own service account, with no IAM role: it loads models through the MLflow server's
  artifact proxy, so it holds no AWS credentials and cannot write Tune state or checkpoints;
- nor the key that signs Tune state.
The Secrets and the account are created by cluster/scripts/setup/02-cluster.sh and
cluster/kuberay/serviceaccount.yaml.
"""

from __future__ import annotations

from typing import Any

# Names of Kubernetes objects, not secrets themselves.
TRAINING_SERVICE_ACCOUNT = "rayvision-ray"
TRAINING_MLFLOW_SECRET = "rayvision-mlflow-client"  # noqa: S105
SERVING_SERVICE_ACCOUNT = "rayvision-serve"
SERVING_RAY_TOKEN_SECRET = "rayvision-serve-ray-token"  # noqa: S105
SERVING_MLFLOW_SECRET = "rayvision-mlflow-serve"  # noqa: S105
# Signs and checks Tune state (app/tune/state_signing.py): serving neither writes nor reads it.
TUNE_STATE_KEY_SECRET = "rayvision-tune-state-key"  # noqa: S105
# The volume of the MLflow login that moves @champion (Secret rayvision-mlflow-promoter).
PROMOTION_LOGIN_VOLUME = "mlflow-promoter"


def with_serving_identities(spec: dict[str, Any]) -> dict[str, Any]:
    """Rewrite a (copied) RayCluster spec's token, service account and MLflow credentials to
    the serving cluster's; fail loudly if the training spec no longer names what is replaced."""
    spec["authOptions"]["secretName"] = SERVING_RAY_TOKEN_SECRET
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        if pod["serviceAccountName"] != TRAINING_SERVICE_ACCOUNT:
            raise SystemExit(f"raycluster.yaml: unexpected account {pod['serviceAccountName']}")
        pod["serviceAccountName"] = SERVING_SERVICE_ACCOUNT
        for container in pod["containers"]:
            # YAML anchors share one envFrom list between groups: it may be rewritten already.
            container["envFrom"] = [
                source
                for source in container.get("envFrom", [])
                if source.get("secretRef", {}).get("name") != TUNE_STATE_KEY_SECRET
            ]
            refs = [source.get("secretRef", {}) for source in container["envFrom"]]
            for ref in refs:
                if ref.get("name") == TRAINING_MLFLOW_SECRET:
                    ref["name"] = SERVING_MLFLOW_SECRET
            if [ref["name"] for ref in refs if ref] != [SERVING_MLFLOW_SECRET]:
                raise SystemExit("raycluster.yaml: each Ray container must read one MLflow Secret")
    return spec


def without_promotion_login(spec: dict[str, Any]) -> dict[str, Any]:
    """A cluster that a RayJob or the RayService creates promotes nothing (evaluate-promote runs
    on the long-lived cluster): its pods get no promotion login (raycluster.yaml's driver group)."""
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        pod["volumes"] = [v for v in pod.get("volumes", []) if v["name"] != PROMOTION_LOGIN_VOLUME]
        for container in pod["containers"]:
            container["volumeMounts"] = [
                m for m in container.get("volumeMounts", []) if m["name"] != PROMOTION_LOGIN_VOLUME
            ]
    return spec
