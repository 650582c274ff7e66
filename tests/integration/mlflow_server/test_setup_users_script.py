"""cluster/scripts/setup/04-users.sh for real, against the real MLflow server with auth: only
Kubernetes is a stand-in (a kubectl that keeps Secrets in a folder and forwards no port, the
server being reachable already). What it creates is checked over the REST API as each user."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.cluster.clusterlib import SETUP

from .conftest import Stack

pytestmark = pytest.mark.integration

API = "/api/2.0/mlflow"
KUBECTL = """#!/usr/bin/env bash
# kubectl as 04-users.sh calls it; Secrets are files under $SECRETS (NAMESPACE.NAME, KEY=VALUE).
set -euo pipefail
args="$*"
case "${args}" in
  *" port-forward "*) exec sleep 600 ;;
  *" get secret "*)
    read -r _ namespace _ _ name _ <<<"${args}"
    key="${args##*.data.}"
    value="$(grep -m1 "^${key%\\}}=" "${SECRETS}/${namespace}.${name}" 2>/dev/null)" || exit 1
    printf '%s' "${value#*=}" | base64 ;;
  *" create secret generic "*)
    read -r _ namespace _ _ _ name _ <<<"${args}"
    for arg in "$@"; do
      if [[ "${arg}" == --from-env-file=* ]]; then cat "${arg#*=}"; fi
    done >"${SECRETS}/${namespace}.${name}" ;;
  "apply -f -") cat >/dev/null ;;
  *) echo "stub kubectl: unexpected: ${args}" >&2; exit 97 ;;
esac
"""


# The Ray pods' MLflow users and the Secrets of 02-cluster.sh that hold their passwords.
POD_USERS = {
    "ray-jobs": "rayvision-mlflow-client",
    "ray-promote": "rayvision-mlflow-promoter",
    "ray-serve": "rayvision-mlflow-serve",
}


def _pod_password(user: str) -> str:
    return f"{user}-password-0123456789"


def _users_script(stack: Stack, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    stubs, secrets = tmp_path / "bin", tmp_path / "secrets"
    if not stubs.exists():
        stubs.mkdir()
        secrets.mkdir()
        kubectl = stubs / "kubectl"
        kubectl.write_text(KUBECTL)
        kubectl.chmod(kubectl.stat().st_mode | stat.S_IXUSR)
        (secrets / "mlflow.mlflow-admin").write_text(f"admin-password={stack.admin[1]}\n")
        for user, secret in POD_USERS.items():
            (secrets / f"rayvision.{secret}").write_text(
                f"MLFLOW_TRACKING_PASSWORD={_pod_password(user)}\n"
            )
    return subprocess.run(
        ["bash", str(SETUP / "04-users.sh")],
        env={
            **stack.script_env(),
            "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}",
            "SECRETS": str(secrets),
            "MLFLOW_LOCAL_PORT": str(urlparse(stack.tracking_uri).port),
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _passwords(tmp_path: Path) -> dict[str, str]:
    lines = (tmp_path / "secrets" / "mlflow.mlflow-users").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def test_the_users_script_creates_the_users_and_grants_their_roles(
    stack: Stack, tmp_path: Path
) -> None:
    first = _users_script(stack, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    passwords = _passwords(tmp_path)
    assert set(passwords) == {"mlops-1", "mlops-2", "ml-engineer-1"}
    users = {**passwords, **{user: _pod_password(user) for user in POD_USERS}}
    for user, password in users.items():
        assert password not in first.stdout + first.stderr, "a password was printed"
        me = stack.call("GET", f"{API}/users/get", (user, password), params={"username": user})
        assert me.status_code == 200, (user, me.text)
    assert stack.call(
        "GET", f"{API}/users/get", stack.admin, params={"username": "mlops-1"}
    ).json()["user"]["is_admin"]
    engineer = ("ml-engineer-1", passwords["ml-engineer-1"])
    experiment = stack.call(
        "GET",
        f"{API}/experiments/get-by-name",
        engineer,
        params={"experiment_name": "cifar10-sweep"},
    ).json()["experiment"]
    run = {"experiment_id": experiment["experiment_id"]}
    assert stack.call("POST", f"{API}/runs/create", engineer, json=run).status_code == 200  # EDIT
    delete = {"experiment_id": experiment["experiment_id"]}
    assert stack.call("POST", f"{API}/experiments/delete", engineer, json=delete).status_code == 403

    # The promotion gate by permission: only ray-promote (and the admin) moves @champion.
    for user, status in {
        "ray-promote": 200,
        "ray-jobs": 403,
        "ray-serve": 403,
        "ml-engineer-1": 403,
        "mlops-2": 403,
    }.items():
        assert _set_champion(stack, (user, users[user])) == status, user
    challenger = {"name": "cifar10-classifier", "alias": "challenger", "version": "1"}
    assert (
        stack.call(
            "POST",
            f"{API}/registered-models/alias",
            ("ray-jobs", users["ray-jobs"]),
            json=challenger,
        ).status_code
        == 200
    )

    again = _users_script(stack, tmp_path)  # idempotent: the same users keep their passwords
    assert again.returncode == 0, again.stdout + again.stderr
    assert _passwords(tmp_path) == passwords
    assert stack.call("GET", f"{API}/users/get", engineer, params={"username": engineer[0]}).ok


def _set_champion(stack: Stack, user: tuple[str, str]) -> int:
    """@champion of the platform's model to its first version, as ``user``."""
    model = "cifar10-classifier"
    versions = stack.call(
        "GET", f"{API}/registered-models/get-latest-versions", stack.admin, params={"name": model}
    ).json()
    if not versions.get("model_versions"):
        with stack.as_admin() as admin:
            experiment = admin.get_experiment_by_name("cifar10-sweep")
            run = admin.create_run(experiment.experiment_id).info.run_id
            admin.create_model_version(model, f"runs:/{run}/model", run_id=run)
    body = {"name": model, "alias": "champion", "version": "1"}
    return stack.call("POST", f"{API}/registered-models/alias", user, json=body).status_code
