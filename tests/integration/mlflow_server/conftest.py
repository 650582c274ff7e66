"""One real MLflow server stack for the session, started by cluster/mlflow/launcher.py like
`make mlflow-up` starts it: a fresh PostgreSQL database, the launcher's own S3 endpoint (moto,
checking credentials), `mlflow server` with basic-auth, all on free ports, all stopped (and the
database dropped) at the end.

Without PostgreSQL at ``MLFLOW_TEST_POSTGRES_URI`` these tests skip, saying so; with ``CI=true``
(GitHub Actions sets it) they fail instead, so that a CI run never passes without them."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import requests
from mlflow import MlflowClient
from psycopg2 import sql
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from cluster.mlflow.launcher import start_stack, stop_stack
from cluster.mlflow.settings import CLIENT_ENV, ServerSettings, split_s3_uri
from cluster.mlflow.stack_state import StackState, load_state
from tests.support import free_port

REPO = Path(__file__).resolve().parents[3]
# The PostgreSQL server the tests create their database on (never a user's MLflow store).
POSTGRES = os.environ.get(
    "MLFLOW_TEST_POSTGRES_URI", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)


def pg_connect(uri: str = POSTGRES) -> Any:
    url = make_url(uri)
    conn = psycopg2.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        dbname=url.database,
        connect_timeout=10,
    )
    conn.autocommit = True
    return conn


def require_postgres() -> None:
    """Skip when the test PostgreSQL server does not answer, or fail when ``CI=true``."""
    try:
        pg_connect().close()
    except psycopg2.OperationalError as error:
        url = make_url(POSTGRES)
        where = f"{url.host}:{url.port or 5432} (MLFLOW_TEST_POSTGRES_URI)"
        reason = f"no PostgreSQL at {where}: {str(error).strip()}"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"{reason}; CI=true: the MLflow server tests must run", pytrace=False)
        pytest.skip(reason)


def store_uri(database: str) -> str:
    """The URI of ``database`` on the test PostgreSQL server."""
    return make_url(POSTGRES).set(database=database).render_as_string(hide_password=False)


def database_exists(database: str) -> bool:
    conn = pg_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            return cur.fetchone() is not None
    finally:
        conn.close()


def drop_database(database: str) -> None:
    conn = pg_connect()
    try:
        with conn.cursor() as cur:
            statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            cur.execute(statement.format(sql.Identifier(database)))
    finally:
        conn.close()


@dataclass(frozen=True)
class Stack:
    settings: ServerSettings
    run_dir: Path

    @property
    def state(self) -> StackState:
        state = load_state(self.run_dir)
        assert state is not None
        return state

    @property
    def tracking_uri(self) -> str:
        return self.settings.tracking_uri

    @property
    def admin(self) -> tuple[str, str]:
        return self.settings.admin_username, self.settings.admin_password.get_secret_value()

    def client_env(self, username: str, password: str) -> dict[str, str]:
        """What a user's shell holds to work against this server (see .env.remote)."""
        return {
            **CLIENT_ENV,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_TRACKING_USERNAME": username,
            "MLFLOW_TRACKING_PASSWORD": password,
        }

    @contextlib.contextmanager
    def as_admin(self) -> Iterator[MlflowClient]:
        """An MLflow client logged in as the admin, for setting up what a test checks."""
        with pytest.MonkeyPatch.context() as env:
            for name, value in self.client_env(*self.admin).items():
                env.setenv(name, value)
            yield MlflowClient(self.tracking_uri)

    def call(
        self, method: str, path: str, auth: tuple[str, str] | None, **kwargs: Any
    ) -> requests.Response:
        """One REST request as ``auth`` (None: unauthenticated)."""
        return requests.request(method, self.tracking_uri + path, auth=auth, timeout=30, **kwargs)

    def objects(self, under: str = "") -> dict[str, bytes]:
        """Objects under ``artifacts destination/under``, by key."""
        bucket, prefix = split_s3_uri(self.state.artifacts_destination)
        s3 = self.state.s3.client()
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{prefix}/{under}"
        )
        keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
        return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}

    @contextlib.contextmanager
    def database(self) -> Iterator[Any]:
        """A cursor on the tracking store itself."""
        conn = pg_connect(self.state.backend_store_uri)
        try:
            with conn.cursor() as cur:
                yield cur
        finally:
            conn.close()

    def script_env(self, **extra: str) -> dict[str, str]:
        """Environment for the project's scripts: this stack's run dir, none of the caller's
        MLflow or AWS settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
        return {**env, "MLFLOW_STACK_DIR": str(self.run_dir), "PY": sys.executable, **extra}

    def run_script(self, command: list[str], **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command,
            cwd=REPO,
            env=self.script_env(**extra_env),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_postgres()
    database = f"mlflow_test_{secrets.token_hex(4)}"
    settings = ServerSettings(
        backend_store_uri=store_uri(database),
        admin_password=SecretStr(secrets.token_urlsafe(18)),
        port=free_port(),
        workers=2,
    )
    run_dir = tmp_path_factory.mktemp("mlflow-stack")
    try:
        start_stack(settings, run_dir)
        yield Stack(settings, run_dir)
    finally:
        stop_stack(run_dir)
        drop_database(database)


@pytest.fixture
def client(stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MlflowClient:
    """An MLflow client logged in as the admin, with no S3 credentials of any kind."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "MLFLOW_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    for name, value in stack.client_env(*stack.admin).items():
        monkeypatch.setenv(name, value)
    return MlflowClient(stack.tracking_uri)
