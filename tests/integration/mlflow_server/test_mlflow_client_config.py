"""The client side: the .env.remote template and the runtime env a Ray Job gets."""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path

import pytest
import yaml

from cluster.mlflow.settings import CLIENT_ENV

from .conftest import REPO, Stack

pytestmark = pytest.mark.integration


def _dotenv(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_env_remote_is_a_template_without_a_password() -> None:
    values = _dotenv(REPO / ".env.remote")
    assert {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME"} <= set(values)
    assert not [name for name in values if "PASSWORD" in name or "SECRET" in name]
    assert values.items() >= CLIENT_ENV.items()


def test_ray_job_runtime_env_carries_the_users_credentials(stack: Stack, tmp_path: Path) -> None:
    """From the environment, and from ~/.netrc when the password is not in it."""
    password = secrets.token_urlsafe(16)
    command = [sys.executable, "-m", "cluster.mlflow.runtime_env"]
    from_env = stack.run_script(command, **stack.client_env("ml-engineer", password))
    assert from_env.returncode == 0, from_env.stderr
    runtime_env = json.loads(from_env.stdout)
    project = yaml.safe_load((REPO / "runtime_env.yaml").read_text())
    assert runtime_env == {
        **project,  # runtime_env.yaml's own settings stay
        "env_vars": {**project["env_vars"], **stack.client_env("ml-engineer", password)},
    }

    netrc = tmp_path / ".netrc"
    netrc.write_text(f"machine 127.0.0.1 login ml-engineer password {password}\n")
    netrc.chmod(0o600)
    from_netrc = stack.run_script(
        command, HOME=str(tmp_path), MLFLOW_TRACKING_URI=stack.tracking_uri
    )
    assert from_netrc.returncode == 0, from_netrc.stderr
    variables = json.loads(from_netrc.stdout)["env_vars"]
    assert variables["MLFLOW_TRACKING_USERNAME"] == "ml-engineer"
    assert variables["MLFLOW_TRACKING_PASSWORD"] == password
