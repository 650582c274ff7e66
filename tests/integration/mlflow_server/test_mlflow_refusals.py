"""`make mlflow-up` refuses bad settings with a clear message, before starting anything."""

from __future__ import annotations

import secrets
import socket
import sys
from pathlib import Path

import pytest

from cluster.mlflow.settings import LEGACY_DEFAULT_ADMIN_PASSWORD
from tests.support import free_port

from .conftest import Stack, database_exists, store_uri

pytestmark = pytest.mark.integration

GOOD_PASSWORD = secrets.token_urlsafe(18)


def _cases(stack: Stack) -> dict[str, tuple[dict[str, str], str]]:
    s3 = stack.state.s3
    assert s3.endpoint_url and s3.access_key_id and s3.secret_access_key
    good = {
        "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
        "MLFLOW_ADMIN_PASSWORD": GOOD_PASSWORD,
    }
    return {
        "wrong secret": (
            {**good, "AWS_SECRET_ACCESS_KEY": "not-the-secret"},
            "S3 credentials rejected",
        ),
        "unknown key": (
            {**good, "AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY0000000"},
            "S3 credentials rejected",
        ),
        "missing bucket": (
            {**good, "MLFLOW_ARTIFACTS_DESTINATION": "s3://no-such-bucket/mlflow"},
            "artifact bucket 'no-such-bucket' does not exist",
        ),
        "default admin password": (
            {**good, "MLFLOW_ADMIN_PASSWORD": LEGACY_DEFAULT_ADMIN_PASSWORD},
            "MLFLOW_ADMIN_PASSWORD: Value error, is the publicly known default admin password",
        ),
        "no admin password": (
            {k: v for k, v in good.items() if k != "MLFLOW_ADMIN_PASSWORD"},
            "MLFLOW_ADMIN_PASSWORD: not set",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "wrong secret",
        "unknown key",
        "missing bucket",
        "default admin password",
        "no admin password",
    ],
)
def test_up_refuses(stack: Stack, tmp_path: Path, case: str) -> None:
    env, message = _cases(stack)[case]
    database = f"mlflow_refused_{secrets.token_hex(4)}"
    port = free_port()
    done = stack.run_script(
        [sys.executable, "-m", "cluster.mlflow.stack", "up"],
        **env,
        MLFLOW_BACKEND_STORE_URI=store_uri(database),
        MLFLOW_PORT=str(port),
        MLFLOW_STACK_DIR=str(tmp_path / "run"),
    )
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    # Refused before starting anything: no server, no database, nothing recorded.
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    assert not database_exists(database)
    assert not (tmp_path / "run" / "state.json").exists()
