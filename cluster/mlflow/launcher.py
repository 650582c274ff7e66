"""Launch, check and stop the central MLflow tracking server.

`make mlflow-up` (through cluster/mlflow/stack.py), the container in cluster/local and the test
fixtures all run this code. Settings (cluster/mlflow/settings.py) are checked before anything
starts; what was started goes into a run directory (cluster/mlflow/stack_state.py), so that
`make mlflow-down` stops exactly that.

The server runs with a PostgreSQL backend store (migrated on every start), artifacts proxied by
the server to ``s3://bucket/prefix`` (clients need no S3 credentials), basic-auth with per-user
READ / EDIT / MANAGE permissions (users and grants live in the same database), and ``/health``.
With neither an artifacts destination nor an S3 endpoint configured, the launcher starts a local
S3-compatible endpoint (moto) with its own generated credentials: the development default.
"""

from __future__ import annotations

import configparser
import io
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import NoReturn

from cluster.mlflow import processes
from cluster.mlflow.postgres import (
    ensure_database,
    password_env,
    upgrade_database,
    without_password,
)
from cluster.mlflow.s3_artifacts import check_bucket, provision_local_s3
from cluster.mlflow.settings import ENV_VARS, LauncherError, ServerSettings, split_s3_uri
from cluster.mlflow.stack_state import (
    STATE_FILE,
    StackState,
    load_state,
    require_state,
    save_state,
    write_private,
)

logger = logging.getLogger(__name__)

SERVER_LOG = "mlflow-server.log"
S3_ENDPOINT_LOG = "s3-endpoint.log"
AUTH_CONFIG = "basic_auth.ini"
# basic-auth plus the promotion gate (cluster/mlflow/alias_guard.py), imported by the server.
GUARDED_LOGIN = "cluster.mlflow.alias_guard:authenticate_and_guard_promotions"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _write_auth_config(path: Path, settings: ServerSettings, database_uri: str) -> Path:
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": settings.default_permission,
        # Users and grants live next to the tracking data: one database to back up. MLflow
        # reads this file with interpolation, so a URL-encoded % must be doubled.
        "database_uri": without_password(database_uri)[0].replace("%", "%%"),
        "authorization_function": GUARDED_LOGIN,
    }
    text = io.StringIO()
    config.write(text)
    write_private(path, text.getvalue())
    return path


def _server_command(settings: ServerSettings, state: StackState) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        without_password(state.backend_store_uri)[0],
        "--serve-artifacts",
        "--artifacts-destination",
        state.artifacts_destination,
        "--app-name",
        "basic-auth",
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--workers",
        str(settings.workers),
    ]


def _server_env(settings: ServerSettings, state: StackState, auth_config: Path) -> dict[str, str]:
    return {
        **os.environ,
        **state.s3.env(),
        **password_env(state.backend_store_uri),
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
        # The server runs elsewhere than the repository: this makes GUARDED_LOGIN importable.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        # Read only while the admin user does not exist yet (first start on a new database).
        "MLFLOW_AUTH_ADMIN_USERNAME": settings.admin_username,
        "MLFLOW_AUTH_ADMIN_PASSWORD": settings.admin_password.get_secret_value(),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": state.flask_secret_key,
        # MLflow's GenAI job runner (scorers, trace rollups) is unused here and costs processes.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }


def _new_state(settings: ServerSettings) -> StackState:
    key = settings.flask_secret_key
    return StackState(
        **settings.connection().model_dump(),
        tracking_uri=settings.tracking_uri,
        flask_secret_key=key.get_secret_value() if key else secrets.token_hex(32),
    )


def _prepare_store(state: StackState, log: Path) -> None:
    check_bucket(state)
    ensure_database(state.backend_store_uri)
    upgrade_database(state.backend_store_uri, log)


def _refuse_used_port(settings: ServerSettings) -> None:
    if processes.port_in_use(settings.host, settings.port):
        raise LauncherError(f"port {settings.port} is already in use on {settings.host}")


def start_server(settings: ServerSettings, run_dir: Path) -> StackState:
    """(Re)start the server of the stack recorded in ``run_dir``: migrate, start, wait for
    /health (the database is created when missing; the S3 endpoint is left as it is)."""
    state = require_state(run_dir)
    if processes.is_running(state.server):
        raise LauncherError(f"the MLflow server is already running at {state.tracking_uri}")
    _refuse_used_port(settings)
    state.tracking_uri = settings.tracking_uri  # the port may differ from the last start
    log = run_dir / SERVER_LOG
    _prepare_store(state, log)
    auth_config = _write_auth_config(run_dir / AUTH_CONFIG, settings, state.backend_store_uri)
    command, env = _server_command(settings, state), _server_env(settings, state, auth_config)
    proc = processes.spawn(command, env, log)
    state.server = processes.record(proc)
    save_state(run_dir, state)
    health = f"{state.tracking_uri}/health"
    try:
        processes.wait_until(lambda: processes.answers(health), proc, "MLflow server", log)
    except LauncherError:
        stop_server(run_dir)
        raise
    logger.info("MLflow server ready at %s (log: %s)", state.tracking_uri, log)
    return state


def stop_server(run_dir: Path) -> bool:
    """Stop the server of the stack in ``run_dir``, leaving the S3 endpoint running."""
    state = require_state(run_dir)
    stopped = processes.stop(state.server)
    state.server = None
    save_state(run_dir, state)
    return stopped


def start_stack(settings: ServerSettings, run_dir: Path) -> StackState:
    """Start everything the settings call for (the development S3 endpoint when no artifact store
    is configured, the database when missing, the server) and record it in ``run_dir``.
    On failure, whatever was started is stopped again."""
    existing = load_state(run_dir)
    if existing is not None and (
        processes.is_running(existing.server) or processes.is_running(existing.s3_endpoint)
    ):
        raise LauncherError(
            f"an MLflow stack is already running at {existing.tracking_uri} (run dir {run_dir}); "
            "stop it first (make mlflow-down)"
        )
    _refuse_used_port(settings)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = _new_state(settings)
    save_state(run_dir, state)
    try:
        if settings.starts_local_s3:
            _start_local_s3(run_dir, state)
        return start_server(settings, run_dir)
    except BaseException:
        stop_stack(run_dir)
        raise


def _start_local_s3(run_dir: Path, state: StackState) -> None:
    port = processes.free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = run_dir / S3_ENDPOINT_LOG
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = processes.spawn(command, os.environ, log)
    state.s3_endpoint = processes.record(proc)
    save_state(run_dir, state)  # recorded before anything else can fail, so down stops it
    ready = f"{endpoint}/moto-api/data.json"
    processes.wait_until(lambda: processes.answers(ready), proc, "S3 endpoint", log)
    state.s3 = provision_local_s3(endpoint, split_s3_uri(state.artifacts_destination)[0])
    save_state(run_dir, state)
    logger.info("development S3 endpoint (in memory) at %s", endpoint)


def stop_stack(run_dir: Path) -> list[str]:
    """Stop what ``start_stack`` recorded in ``run_dir``; returns what was stopped."""
    state = load_state(run_dir)
    if state is None:
        return []
    stopped = [
        f"{what} (pid {record.pid})"
        for what, record in (("MLflow server", state.server), ("S3 endpoint", state.s3_endpoint))
        if record is not None and processes.stop(record)
    ]
    (run_dir / STATE_FILE).unlink()
    return stopped


def serve(settings: ServerSettings, work_dir: Path) -> NoReturn:
    """Check and migrate like ``start_server``, then become the server (containers: the server
    is the container's main process)."""
    if settings.starts_local_s3:
        raise LauncherError(
            f"serve needs a configured artifact store: set {ENV_VARS['artifacts_destination']} "
            f"(and {ENV_VARS['s3_endpoint_url']} for MinIO)"
        )
    state = _new_state(settings)
    _prepare_store(state, work_dir / SERVER_LOG)
    auth_config = _write_auth_config(work_dir / AUTH_CONFIG, settings, state.backend_store_uri)
    command = _server_command(settings, state)
    os.execve(command[0], command, _server_env(settings, state, auth_config))  # noqa: S606
