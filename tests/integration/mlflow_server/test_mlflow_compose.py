"""cluster/local/docker-compose.yml agrees with the launcher (Docker cannot run here): same
settings names and values, same bucket, same port, same MLflow version, and the launcher's
own checks accept the server's environment."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import pytest
import requests
import yaml
from sqlalchemy.engine import make_url

from cluster.mlflow.settings import (
    DEFAULT_ARTIFACTS_DESTINATION,
    DEFAULT_PORT,
    ENV_VARS,
    ServerSettings,
    split_s3_uri,
)
from tests.image_env import build
from tests.support import free_port, http_ok, stop_process_group, wait_for

from .conftest import REPO, Stack, database_exists, drop_database, store_uri

pytestmark = pytest.mark.integration

LOCAL = REPO / "cluster" / "local"
SECRETS = {"POSTGRES_PASSWORD", "AWS_SECRET_ACCESS_KEY", "MLFLOW_ADMIN_PASSWORD"}
DOTENV = {
    "POSTGRES_PASSWORD": secrets.token_hex(12),
    "AWS_ACCESS_KEY_ID": "mlflow",
    "AWS_SECRET_ACCESS_KEY": secrets.token_hex(12),
    "MLFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(16),
}
VARIABLE = re.compile(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}")


def _interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution: ${X}, ${X:-default}, ${X:?error}, $$."""

    def value(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if env.get(name):
            return env[name]
        if operator == ":?":
            raise LookupError(f"{name}: {argument}")
        return argument if operator == ":-" else ""

    return VARIABLE.sub(value, text).replace("$$", "$")


def _compose(env: Mapping[str, str] = DOTENV) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(
        _interpolate((LOCAL / "docker-compose.yml").read_text(), env)
    )
    return loaded


def test_every_secret_comes_from_the_environment() -> None:
    raw = yaml.safe_load((LOCAL / "docker-compose.yml").read_text())
    for service in raw["services"].values():
        for name, text in service.get("environment", {}).items():
            for variable, operator, _ in VARIABLE.findall(str(text)):
                if variable in SECRETS:
                    assert operator == ":?", f"{name} must require {variable}"
    for missing in SECRETS:
        with pytest.raises(LookupError, match=missing):
            _compose({k: v for k, v in DOTENV.items() if k != missing})


def test_mlflow_service_runs_the_launcher_with_its_settings() -> None:
    services = _compose()["services"]
    env = {name: str(value) for name, value in services["mlflow"]["environment"].items()}
    assert set(env) <= set(ENV_VARS.values())
    settings = ServerSettings.from_env(env)  # the launcher's own validation

    postgres = services["postgres"]["environment"]
    store = make_url(settings.backend_store_uri)
    assert (store.host, store.port, store.database) == ("postgres", 5432, postgres["POSTGRES_DB"])
    assert (store.username, store.password) == (
        postgres["POSTGRES_USER"],
        DOTENV["POSTGRES_PASSWORD"],
    )

    minio = services["minio"]["environment"]
    assert settings.s3_endpoint_url == "http://minio:9000"
    assert "127.0.0.1:9000:9000" in services["minio"]["ports"]
    assert settings.aws_access_key_id == minio["MINIO_ROOT_USER"]
    assert settings.aws_secret_access_key is not None
    assert settings.aws_secret_access_key.get_secret_value() == minio["MINIO_ROOT_PASSWORD"]

    assert settings.artifacts_destination == DEFAULT_ARTIFACTS_DESTINATION
    bucket = split_s3_uri(DEFAULT_ARTIFACTS_DESTINATION)[0]
    init_script = " ".join(services["minio-init"]["command"])
    assert f"mc mb --ignore-existing local/{bucket}" in init_script

    assert settings.port == DEFAULT_PORT
    assert settings.host == "0.0.0.0"
    assert f"127.0.0.1:{DEFAULT_PORT}:{DEFAULT_PORT}" in services["mlflow"]["ports"]
    assert f"http://127.0.0.1:{DEFAULT_PORT}/health" in str(services["mlflow"]["healthcheck"])
    dockerfile = (LOCAL / "Dockerfile").read_text()
    assert 'CMD ["python", "-m", "cluster.mlflow.stack", "serve"]' in dockerfile


def test_images_are_pinned_to_the_projects_versions() -> None:
    services = _compose()["services"]
    version = mlflow.__version__
    assert services["mlflow"]["build"]["args"]["MLFLOW_VERSION"] == version
    assert services["mlflow"]["image"].endswith(f":{version}")
    assert f"ARG MLFLOW_VERSION={version}" in (LOCAL / "Dockerfile").read_text()
    for name in ("minio", "minio-init"):
        assert re.search(r":RELEASE\.\d{4}-\d\d-\d\dT", services[name]["image"]), name
    postgres_major = int(services["postgres"]["image"].split(":")[1])
    # backup-mlflow.sh runs the host's pg_dump, which refuses servers newer than itself.
    pg_dump = shutil.which("pg_dump")
    assert pg_dump, "pg_dump is needed by cluster/scripts/backup-mlflow.sh"
    found = re.search(r"\) (\d+)", subprocess.check_output([pg_dump, "--version"], text=True))
    assert found and postgres_major <= int(found.group(1))


def test_health_checks_start_order_and_named_volumes() -> None:
    compose = _compose()
    services = compose["services"]
    for name in ("postgres", "minio", "mlflow"):
        assert services[name]["healthcheck"]["test"], name
    assert services["mlflow"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "minio-init": {"condition": "service_completed_successfully"},
    }
    assert services["minio-init"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    for name, target in (("postgres", "/var/lib/postgresql/data"), ("minio", "/data")):
        (volume,) = services[name]["volumes"]
        source, mount = volume.split(":")
        assert mount == target and source in compose["volumes"], name


def test_image_build_context_holds_what_the_dockerfile_copies() -> None:
    copied = re.findall(r"^COPY (\S+) ", (LOCAL / "Dockerfile").read_text(), re.MULTILINE)
    allowed = (LOCAL / "Dockerfile.dockerignore").read_text().splitlines()
    assert copied
    for path in copied:
        assert (REPO / path).is_file(), path
        assert f"!{path}" in allowed, path


def test_the_containers_command_checks_migrates_and_becomes_the_server(
    stack: Stack, tmp_path: Path
) -> None:
    """The image's CMD, in its Python environment (built from the Dockerfile's install line)
    and its WORKDIR (only the files it copies), with the compose service's environment, its
    hosts pointed at this test's PostgreSQL and S3 endpoint: it creates and migrates the
    database, then execs the server."""
    image = build(LOCAL / "Dockerfile", tmp_path)
    (cmd,) = re.findall(r"^CMD (\[.*\])$", (LOCAL / "Dockerfile").read_text(), re.MULTILINE)
    env = {
        name: str(value) for name, value in _compose()["services"]["mlflow"]["environment"].items()
    }
    database = f"mlflow_serve_{secrets.token_hex(4)}"
    port = free_port()
    s3 = stack.state.s3
    assert s3.endpoint_url and s3.access_key_id and s3.secret_access_key
    env |= {
        "MLFLOW_BACKEND_STORE_URI": store_uri(database),
        "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
        "TMPDIR": str(tmp_path),
    }
    process = subprocess.Popen(
        json.loads(cmd),
        cwd=image.workdir,
        env=image.env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 120, "the served /health")
        # exec: the container's main process is the server itself, which gets the signals.
        args = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        assert args[1:4] == [b"-m", b"mlflow", b"server"]
        assert database_exists(database)
        search = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search"
        assert requests.get(search, timeout=10).status_code == 401
    finally:
        stop_process_group(process)
        drop_database(database)
