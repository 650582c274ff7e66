"""The central MLflow server's settings: what the launcher reads from the environment and checks
before anything starts, and how to reach the store and the artifact bucket.

Settings come from environment variables (``ENV_VARS``, the same names
cluster/local/docker-compose.yml uses); an invalid or missing one is refused with its name.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Literal, Self

import boto3
from botocore.config import Config as BotoConfig
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

DEFAULT_BACKEND_STORE_URI = "postgresql+psycopg2://postgres@127.0.0.1:5432/mlflow"
DEFAULT_ARTIFACTS_DESTINATION = "s3://mlflow/artifacts"
DEFAULT_PORT = 5000
# The admin password older MLflow releases shipped in basic_auth.ini (GHSA-gq3w-7jj3-x7gr).
LEGACY_DEFAULT_ADMIN_PASSWORD = "password1234"  # noqa: S105 - refused, never used
MIN_PASSWORD_LENGTH = 12  # MLflow's own rule for basic-auth passwords
S3_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"

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
