"""Launch, check and stop the central MLflow tracking server.

`make mlflow-up`, the container in cluster/local and the test fixtures all run this code.
Settings come from environment variables (``ENV_VARS``, the same names docker-compose.yml uses)
and are checked before anything starts; what was started (pids, the URI, the development S3
endpoint's credentials) goes into a run directory, so that `make mlflow-down` stops exactly that.

The server runs with a PostgreSQL backend store (migrated on every start), artifacts proxied by
the server to ``s3://bucket/prefix`` (clients need no S3 credentials), basic-auth with per-user
READ / EDIT / MANAGE permissions (users and grants live in the same database), and ``/health``.
With neither an artifacts destination nor an S3 endpoint configured, the launcher starts a local
S3-compatible endpoint (moto) with its own generated credentials: the development default.
"""

from __future__ import annotations

import configparser
import contextlib
import io
import ipaddress
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, NoReturn, Self

import boto3
import psycopg2
import requests
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from psycopg2 import sql
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from sqlalchemy.engine import make_url

logger = logging.getLogger(__name__)

DEFAULT_BACKEND_STORE_URI = "postgresql+psycopg2://postgres@127.0.0.1:5432/mlflow"
DEFAULT_ARTIFACTS_DESTINATION = "s3://mlflow/artifacts"
DEFAULT_PORT = 5000
# The admin password older MLflow releases shipped in basic_auth.ini (GHSA-gq3w-7jj3-x7gr).
LEGACY_DEFAULT_ADMIN_PASSWORD = "password1234"  # noqa: S105 - refused, never used
MIN_PASSWORD_LENGTH = 12  # MLflow's own rule for basic-auth passwords
STATE_FILE = "state.json"
SERVER_LOG = "mlflow-server.log"
S3_ENDPOINT_LOG = "s3-endpoint.log"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.25
S3_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"
# Error codes S3 and MinIO answer with for an unknown key, a wrong secret or a denied key.
CREDENTIAL_ERROR_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "403"}
)

# What a client of this server sets, besides MLFLOW_TRACKING_URI and credentials: every artifact
# byte through the server. Otherwise an MLflow 3 client downloads (and uploads large files)
# directly from the bucket with presigned URLs, which needs a route to the S3 endpoint: MinIO in
# cluster/local is `minio:9000`, unreachable from the laptop.
CLIENT_ENV = {
    "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
    "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false",
}

# Settings field -> environment variable. cluster/local/docker-compose.yml uses these names.
ENV_VARS: dict[str, str] = {
    "backend_store_uri": "MLFLOW_BACKEND_STORE_URI",
    "artifacts_destination": "MLFLOW_ARTIFACTS_DESTINATION",
    "s3_endpoint_url": "MLFLOW_S3_ENDPOINT_URL",
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "admin_username": "MLFLOW_ADMIN_USERNAME",
    "admin_password": "MLFLOW_ADMIN_PASSWORD",
    "flask_secret_key": "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "host": "MLFLOW_HOST",
    "port": "MLFLOW_PORT",
    "workers": "MLFLOW_WORKERS",
    "default_permission": "MLFLOW_AUTH_DEFAULT_PERMISSION",
}


class LauncherError(RuntimeError):
    """A setting or a dependency (database, bucket, port) is wrong; the message says which."""


def check_password(password: str) -> None:
    """Refuse the password MLflow used to ship as its default, and any shorter than MLflow's
    minimum, before a server or a user is created with it."""
    if password == LEGACY_DEFAULT_ADMIN_PASSWORD:
        raise ValueError(
            "is the publicly known default admin password of older MLflow releases; choose another"
        )
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"must be at least {MIN_PASSWORD_LENGTH} characters")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


class S3Access(BaseModel):
    """How to reach the artifact bucket: endpoint (None: AWS S3) and keys (None: boto3's chain,
    e.g. an IAM role on AWS)."""

    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None

    def client(self, service: str = "s3") -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name="us-east-1" if self.endpoint_url else None,
            config=BotoConfig(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2}),
        )

    def env(self) -> dict[str, str]:
        names = {
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }
        return {name: value for name, value in names.items() if value}


class Connection(BaseModel):
    """What backup, restore and the server need: the store and the artifact bucket."""

    backend_store_uri: str
    artifacts_destination: str
    s3: S3Access


class StoreSettings(BaseModel):
    """Where the tracking data and the artifacts live."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend_store_uri: str = Field(
        DEFAULT_BACKEND_STORE_URI, pattern=r"^postgresql(\+psycopg2)?://"
    )
    artifacts_destination: str | None = Field(None, pattern=S3_URI_PATTERN)
    s3_endpoint_url: str | None = Field(None, pattern=r"^https?://")
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None

    @field_validator("backend_store_uri")
    @classmethod
    def _psycopg2_driver(cls, uri: str) -> str:
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the project ships psycopg2.
        return re.sub(r"^postgresql://", "postgresql+psycopg2://", uri)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Self:
        """The settings from ``ENV_VARS``; an invalid or missing value names its variable."""
        values = {
            field: environ[ENV_VARS[field]]
            for field in cls.model_fields
            if environ.get(ENV_VARS[field])
        }
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            problems = "; ".join(
                f"{ENV_VARS[str(e['loc'][0])]}: {'not set' if e['type'] == 'missing' else e['msg']}"
                for e in error.errors()
            )
            raise LauncherError(f"invalid MLflow server settings: {problems}") from None

    @property
    def starts_local_s3(self) -> bool:
        """Neither a destination nor an endpoint configured: the development default."""
        return self.artifacts_destination is None and self.s3_endpoint_url is None

    def connection(self) -> Connection:
        secret = self.aws_secret_access_key
        return Connection(
            backend_store_uri=self.backend_store_uri,
            artifacts_destination=self.artifacts_destination or DEFAULT_ARTIFACTS_DESTINATION,
            s3=S3Access(
                endpoint_url=self.s3_endpoint_url,
                access_key_id=self.aws_access_key_id,
                secret_access_key=secret.get_secret_value() if secret else None,
            ),
        )


class ServerSettings(StoreSettings):
    """The store plus the server itself: admin account, network, auth defaults."""

    admin_username: str = Field("admin", pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
    admin_password: SecretStr
    flask_secret_key: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    workers: int = Field(2, ge=1, le=64)
    default_permission: Literal["NO_PERMISSIONS", "READ", "USE", "EDIT", "MANAGE"] = "READ"

    @field_validator("admin_password")
    @classmethod
    def _not_default_password(cls, password: SecretStr) -> SecretStr:
        check_password(password.get_secret_value())
        return password

    @property
    def tracking_uri(self) -> str:
        """The URI a client on this machine uses (loopback for a wildcard bind address)."""
        host = self.host
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(host).is_unspecified:
                host = "127.0.0.1"
        return f"http://{host}:{self.port}"


class ProcessRecord(BaseModel):
    pid: int
    # `ps -o lstart`: tells our process from a later one that reused its pid.
    started: str


class StackState(Connection):
    """What `up` started; saved in the run directory (mode 0600: it holds dev credentials)."""

    tracking_uri: str
    flask_secret_key: str
    server: ProcessRecord | None = None
    s3_endpoint: ProcessRecord | None = None


# ---------------------------------------------------------------------------- PostgreSQL


def _without_password(uri: str) -> tuple[str, str | None]:
    """The URI minus its password, and the password: passed as PGPASSWORD (libpq reads it), so
    that no secret appears in a command line or a config file."""
    url = make_url(uri)
    return url.set(password=None).render_as_string(hide_password=False), url.password


def libpq_env(uri: str) -> dict[str, str]:
    """PG* variables that point psql, pg_dump and pg_restore at the store."""
    url = make_url(uri)
    values = {
        "PGHOST": url.host,
        "PGPORT": str(url.port) if url.port else None,
        "PGUSER": url.username,
        "PGPASSWORD": url.password,
        "PGDATABASE": url.database,
        "PGSSLMODE": url.query.get("sslmode"),
    }
    return {name: str(value) for name, value in values.items() if value}


@contextlib.contextmanager
def _pg_connect(uri: str, database: str | None = None) -> Iterator[Any]:
    url = make_url(uri)
    try:
        conn = psycopg2.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            dbname=database or url.database,
            connect_timeout=10,
            sslmode=url.query.get("sslmode"),
        )
    except psycopg2.OperationalError as error:
        raise LauncherError(
            f"cannot connect to PostgreSQL at {url.host}:{url.port or 5432} "
            f"as {url.username}: {str(error).strip()}"
        ) from None
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def ensure_database(uri: str, *, require_empty: bool = False) -> bool:
    """Create the store's database when missing (True if created). With ``require_empty``,
    refuse a database that already holds tables (a restore needs an empty one)."""
    name = make_url(uri).database
    if not name:
        raise LauncherError(f"the backend store URI names no database: {_without_password(uri)[0]}")
    with _pg_connect(uri, database="postgres") as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            logger.info("created PostgreSQL database %s", name)
            return True
    if require_empty:
        with _pg_connect(uri) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            )
            (tables,) = cur.fetchone()
        if tables:
            raise LauncherError(
                f"database {name} is not empty ({tables} tables): restore into an empty or "
                "absent database (drop it first, or point MLFLOW_BACKEND_STORE_URI at a new one)"
            )
    return False


def _upgrade_database(uri: str, log: Path) -> None:
    """Apply MLflow's schema migrations (creates the tables on a new database)."""
    bare_uri, password = _without_password(uri)
    env = {**os.environ, **({"PGPASSWORD": password} if password else {})}
    with log.open("ab") as out:
        done = subprocess.run(  # noqa: S603 - our interpreter, fixed arguments
            [sys.executable, "-m", "mlflow", "db", "upgrade", bare_uri],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=600,
        )
    if done.returncode != 0:
        raise LauncherError(f"database migration failed:\n{_tail(log)}")


# ---------------------------------------------------------------------------- S3


def check_bucket(connection: Connection) -> None:
    """Fail with a clear message unless the destination bucket exists and the keys may list it."""
    bucket, prefix = split_s3_uri(connection.artifacts_destination)
    where = connection.s3.endpoint_url or "AWS S3"
    try:
        connection.s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchBucket", "404"):
            raise LauncherError(
                f"artifact bucket '{bucket}' does not exist at {where}: create it, or fix "
                f"{ENV_VARS['artifacts_destination']}"
            ) from None
        if code in CREDENTIAL_ERROR_CODES:
            raise LauncherError(
                f"S3 credentials rejected by {where} for bucket '{bucket}' ({code}): check "
                f"{ENV_VARS['aws_access_key_id']} / {ENV_VARS['aws_secret_access_key']}"
            ) from None
        raise LauncherError(f"cannot list s3://{bucket}/{prefix} at {where}: {error}") from None
    except NoCredentialsError:
        raise LauncherError(
            f"no S3 credentials: set {ENV_VARS['aws_access_key_id']} / "
            f"{ENV_VARS['aws_secret_access_key']} (or use an IAM role on AWS)"
        ) from None
    except BotoCoreError as error:
        raise LauncherError(f"cannot reach the S3 endpoint {where}: {error}") from None


def _key_prefix(destination: str) -> tuple[str, str]:
    bucket, prefix = split_s3_uri(destination)
    return bucket, f"{prefix}/" if prefix else ""


def download_artifacts(connection: Connection, local_dir: Path) -> int:
    """Copy every object under the artifacts destination into ``local_dir``; returns the count."""
    bucket, prefix = _key_prefix(connection.artifacts_destination)
    s3 = connection.s3.client()
    root = local_dir.resolve()
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key: str = item["Key"]
            target = (root / key[len(prefix) :]).resolve()
            if key.endswith("/") or not target.is_relative_to(root):
                continue  # folder markers, and keys that would escape the backup directory
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(target))
            count += 1
    return count


def upload_artifacts(connection: Connection, local_dir: Path) -> int:
    """Copy every file under ``local_dir`` back under the artifacts destination."""
    bucket, prefix = _key_prefix(connection.artifacts_destination)
    s3 = connection.s3.client()
    files = sorted(path for path in local_dir.rglob("*") if path.is_file())
    for path in files:
        s3.upload_file(str(path), bucket, prefix + path.relative_to(local_dir).as_posix())
    return len(files)


def _provision_local_s3(endpoint: str, bucket: str) -> S3Access:
    """Give a fresh moto server a key pair and the bucket, then make it check signatures."""
    # Any key will do until auth is switched on at the end.
    bootstrap = S3Access(endpoint_url=endpoint, access_key_id="setup", secret_access_key="-")  # noqa: S106
    iam = bootstrap.client("iam")
    iam.create_user(UserName="mlflow-server")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.put_user_policy(
        UserName="mlflow-server", PolicyName="artifacts", PolicyDocument=json.dumps(policy)
    )
    key = iam.create_access_key(UserName="mlflow-server")["AccessKey"]
    access = S3Access(
        endpoint_url=endpoint,
        access_key_id=key["AccessKeyId"],
        secret_access_key=key["SecretAccessKey"],
    )
    access.client().create_bucket(Bucket=bucket)
    # From here on moto rejects unknown keys and bad signatures, like S3 and MinIO.
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    return access


# ---------------------------------------------------------------------------- processes


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _tail(log: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def _start_time(pid: int) -> str | None:
    done = subprocess.run(  # noqa: S603 - fixed arguments
        ["ps", "-o", "lstart=", "-p", str(pid)],  # noqa: S607 - ps from PATH, as on any POSIX
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or None


def _spawn(command: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own process group and in the log's directory (the run dir, so
    that any stray file lands there), output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 - our interpreter, arguments built here
            command,
            env=dict(env),
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _record(proc: subprocess.Popen[bytes]) -> ProcessRecord:
    return ProcessRecord(pid=proc.pid, started=_start_time(proc.pid) or "")


def _group_alive(pgid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)  # reap our own child, or a zombie would look alive
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def is_running(record: ProcessRecord | None) -> bool:
    return (
        record is not None
        and _group_alive(record.pid)
        and _start_time(record.pid) in (record.started, None)
    )


def _stop(record: ProcessRecord | None) -> bool:
    """Stop the process group ``record`` started (TERM, then KILL); False if already gone."""
    if record is None or not is_running(record):
        return False
    for sig, timeout in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _group_alive(record.pid):
                return True
            time.sleep(POLL_INTERVAL_S)
    raise LauncherError(f"process group {record.pid} survived SIGKILL")


def _wait_until(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if proc.poll() is not None:
            raise LauncherError(
                f"{what} exited with status {proc.returncode} before it was ready:\n{_tail(log)}"
            )
        if time.monotonic() > deadline:
            raise LauncherError(f"{what} not ready after {START_TIMEOUT_S:.0f} s:\n{_tail(log)}")
        time.sleep(POLL_INTERVAL_S)


# ---------------------------------------------------------------------------- the server


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)


def _write_auth_config(path: Path, settings: ServerSettings, database_uri: str) -> Path:
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": settings.default_permission,
        # Users and grants live next to the tracking data: one database to back up. MLflow
        # reads this file with interpolation, so a URL-encoded % must be doubled.
        "database_uri": _without_password(database_uri)[0].replace("%", "%%"),
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    text = io.StringIO()
    config.write(text)
    _write_private(path, text.getvalue())
    return path


def _server_command(settings: ServerSettings, connection: Connection) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        _without_password(connection.backend_store_uri)[0],
        "--serve-artifacts",
        "--artifacts-destination",
        connection.artifacts_destination,
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
    password = _without_password(state.backend_store_uri)[1]
    return {
        **os.environ,
        **state.s3.env(),
        **({"PGPASSWORD": password} if password else {}),
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
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
    _upgrade_database(state.backend_store_uri, log)


def load_state(run_dir: Path) -> StackState | None:
    path = run_dir / STATE_FILE
    return StackState.model_validate_json(path.read_text()) if path.exists() else None


def _save_state(run_dir: Path, state: StackState) -> None:
    _write_private(run_dir / STATE_FILE, state.model_dump_json(indent=2))


def _require_state(run_dir: Path) -> StackState:
    state = load_state(run_dir)
    if state is None:
        raise LauncherError(f"no MLflow stack recorded in {run_dir}")
    return state


def start_server(settings: ServerSettings, run_dir: Path) -> StackState:
    """(Re)start the server of the stack recorded in ``run_dir``: migrate, start, wait for
    /health (the database is created when missing; the S3 endpoint is left as it is)."""
    state = _require_state(run_dir)
    if is_running(state.server):
        raise LauncherError(f"the MLflow server is already running at {state.tracking_uri}")
    if _port_in_use(settings.host, settings.port):
        raise LauncherError(f"port {settings.port} is already in use on {settings.host}")
    state.tracking_uri = settings.tracking_uri  # the port may differ from the last start
    log = run_dir / SERVER_LOG
    _prepare_store(state, log)
    auth_config = _write_auth_config(run_dir / "basic_auth.ini", settings, state.backend_store_uri)
    proc = _spawn(_server_command(settings, state), _server_env(settings, state, auth_config), log)
    state.server = _record(proc)
    _save_state(run_dir, state)
    try:
        _wait_until(lambda: _answers(f"{state.tracking_uri}/health"), proc, "MLflow server", log)
    except LauncherError:
        stop_server(run_dir)
        raise
    logger.info("MLflow server ready at %s (log: %s)", state.tracking_uri, log)
    return state


def stop_server(run_dir: Path) -> bool:
    """Stop the server of the stack in ``run_dir``, leaving the S3 endpoint running."""
    state = _require_state(run_dir)
    stopped = _stop(state.server)
    state.server = None
    _save_state(run_dir, state)
    return stopped


def start_stack(settings: ServerSettings, run_dir: Path) -> StackState:
    """Start everything the settings call for (the development S3 endpoint when no artifact store
    is configured, the database when missing, the server) and record it in ``run_dir``.
    On failure, whatever was started is stopped again."""
    existing = load_state(run_dir)
    if existing is not None and (is_running(existing.server) or is_running(existing.s3_endpoint)):
        raise LauncherError(
            f"an MLflow stack is already running at {existing.tracking_uri} (run dir {run_dir}); "
            "stop it first (make mlflow-down)"
        )
    if _port_in_use(settings.host, settings.port):
        raise LauncherError(f"port {settings.port} is already in use on {settings.host}")
    run_dir.mkdir(parents=True, exist_ok=True)
    state = _new_state(settings)
    _save_state(run_dir, state)
    try:
        if settings.starts_local_s3:
            _start_local_s3(run_dir, state)
        return start_server(settings, run_dir)
    except BaseException:
        stop_stack(run_dir)
        raise


def _start_local_s3(run_dir: Path, state: StackState) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = run_dir / S3_ENDPOINT_LOG
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = _spawn(command, os.environ, log)
    state.s3_endpoint = _record(proc)
    _save_state(run_dir, state)  # recorded before anything else can fail, so down stops it
    _wait_until(lambda: _answers(f"{endpoint}/moto-api/data.json"), proc, "S3 endpoint", log)
    state.s3 = _provision_local_s3(endpoint, split_s3_uri(state.artifacts_destination)[0])
    _save_state(run_dir, state)
    logger.info("development S3 endpoint (in memory) at %s", endpoint)


def stop_stack(run_dir: Path) -> list[str]:
    """Stop what ``start_stack`` recorded in ``run_dir``; returns what was stopped."""
    state = load_state(run_dir)
    if state is None:
        return []
    stopped = [
        f"{what} (pid {record.pid})"
        for what, record in (("MLflow server", state.server), ("S3 endpoint", state.s3_endpoint))
        if record is not None and _stop(record)
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
    auth_config = _write_auth_config(work_dir / "basic_auth.ini", settings, state.backend_store_uri)
    command = _server_command(settings, state)
    os.execve(command[0], command, _server_env(settings, state, auth_config))  # noqa: S606


def resolve_connection(run_dir: Path, environ: Mapping[str, str]) -> Connection:
    """The store and bucket of the stack recorded in ``run_dir``, else those of the settings in
    the environment (backup and restore use this)."""
    state = load_state(run_dir)
    if state is not None:
        return Connection.model_validate(state.model_dump())
    return StoreSettings.from_env(environ).connection()
