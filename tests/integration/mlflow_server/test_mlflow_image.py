"""The MLflow chart's pods run for real, as far as this machine allows: the image's Python
environment built from cluster/docker/mlflow.Dockerfile's own install line, each container
started with the exact command, arguments and environment the chart renders, against a
PostgreSQL that checks passwords over TLS (as RDS does), an S3 endpoint and Secrets Manager
(moto, standing in for the pod's IAM role).

- The server starts with `--app-name=basic-auth` (which needs the auth extra) and keeps its
  artifacts in S3.
- A rotation of the RDS-managed password (new password in the database and in the secret, every
  session cut) is survived by the running server: the sidecar rewrites the password file.
- A database left by the previous MLflow version is migrated by the chart's pre-upgrade Job,
  and the server starts on it with its data.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import pytest
import requests
import sqlalchemy
from alembic import command
from alembic.script import ScriptDirectory
from mlflow.store.db.utils import _get_alembic_config, _get_schema_version
from moto.server import ThreadedMotoServer

from tests.cluster.clusterlib import render_chart
from tests.cluster.iam import (
    TEST_KMS_KEY_ARN,
    TEST_REGION,
    RecordingProxy,
    bucket_name,
    decisions,
    is_s3,
    json_api_authorizations,
    role_policies,
    s3_requests_to_authorizations,
)
from tests.image_env import ImageEnv, build
from tests.local_pod import LocalPod
from tests.support import free_port, wait_for

from .conftest import REPO
from .password_postgres import PasswordPostgres, password_postgres

pytestmark = pytest.mark.integration

BUCKET = bucket_name()
DATABASE = "mlflow"
USER = "mlflow"
REGION = TEST_REGION
CA_FILE = "database-ca.pem"
POD_KEY = "mlflow-pods"  # the access key of the pods' IAM role (IRSA) here


@dataclass
class Aws:
    url: str  # what the pods use: a recording proxy in front of the endpoint
    s3: Any  # the test's own clients, straight to the endpoint (not recorded)
    secretsmanager: Any
    secret_arn: str
    recorder: RecordingProxy

    def keys(self, prefix: str) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return [item["Key"] for item in listed.get("Contents", [])]


@dataclass
class Deployed:
    pod: LocalPod
    objects: dict[str, dict[str, Any]]
    postgres: PasswordPostgres
    aws: Aws
    admin: tuple[str, str]
    password: str  # the database password now

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.pod.container('mlflow')['ports'][0]['containerPort']}"

    def store_uri(self) -> str:
        password = quote(self.password, safe="")
        return (
            f"postgresql+psycopg2://{USER}:{password}@127.0.0.1:{self.postgres.port}/{DATABASE}"
            "?sslmode=require"
        )

    def create_experiment(self) -> str:
        response = requests.post(
            f"{self.url}/api/2.0/mlflow/experiments/create",
            json={"name": f"image-{secrets.token_hex(4)}"},
            auth=self.admin,
            timeout=30,
        )
        response.raise_for_status()
        return str(response.json()["experiment_id"])

    def can_create_experiment(self) -> bool:
        try:
            self.create_experiment()
        except requests.RequestException:
            return False
        return True


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> ImageEnv:
    return build(REPO / "cluster" / "docker" / "mlflow.Dockerfile", tmp_path_factory.mktemp("img"))


@pytest.fixture(scope="module")
def aws() -> Iterator[Aws]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    keys = {"aws_access_key_id": "test-admin", "aws_secret_access_key": "test"}
    s3 = boto3.client("s3", endpoint_url=url, region_name=REGION, **keys)
    # moto's state is per process: another module may have made the bucket already.
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    sm = boto3.client("secretsmanager", endpoint_url=url, region_name=REGION, **keys)
    recorder = RecordingProxy(url).start()
    try:
        yield Aws(recorder.endpoint, s3, sm, "", recorder)
    finally:
        recorder.stop()
        server.stop()


@pytest.fixture(scope="module")
def deployed(
    image: ImageEnv, aws: Aws, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployed]:
    password = secrets.token_urlsafe(18) + ":\\x"  # characters pgpass must escape
    with password_postgres() as postgres:
        postgres.create_owner(USER, password, DATABASE)
        # As RDS creates it: JSON with the master user's name and password.
        secret = json.dumps({"username": USER, "password": password})
        created = aws.secretsmanager.create_secret(Name="rds!db-0a1b2c3d", SecretString=secret)
        aws.secret_arn = created["ARN"]
        root = tmp_path_factory.mktemp("pod")
        volumes = {name: root / name for name in ("tmp", "db-credentials", "auth-config")}
        for path in volumes.values():
            path.mkdir()
        # This server's CA where the pod sees it (its /tmp), as the image holds RDS's.
        shutil.copy(postgres.certificate, volumes["tmp"] / CA_FILE)
        objects = render_chart(
            {
                "image": {"repository": "rayvision-mlflow"},
                "serviceAccount": {"roleArn": "arn:aws:iam::123456789012:role/rayvision-mlflow"},
                "artifactsDestination": f"s3://{BUCKET}/mlflow",
                "database": {
                    "host": "127.0.0.1",
                    "port": postgres.port,
                    "passwordSecretArn": aws.secret_arn,
                    "passwordRefreshSeconds": 5,
                    # The chart's default verify-full, against this server's CA as against RDS's.
                    "sslRootCert": f"/tmp/{CA_FILE}",
                },
                "server": {"port": free_port()},
                "ingress": {"enabled": False},
            }
        )
        admin = ("admin", secrets.token_urlsafe(16))
        pod = LocalPod(
            objects["Deployment"]["spec"]["template"]["spec"],
            image,
            volumes,
            secrets={
                "mlflow-admin": {
                    "admin-username": admin[0],
                    "admin-password": admin[1],
                    "flask-secret-key": secrets.token_hex(16),
                }
            },
            # What the IRSA webhook gives every container: the role's credentials, the region.
            injected_env={
                "AWS_ENDPOINT_URL": aws.url,
                "AWS_ACCESS_KEY_ID": POD_KEY,
                "AWS_SECRET_ACCESS_KEY": "irsa",
                "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION,
                "TMPDIR": str(volumes["tmp"]),
            },
            logs=root,
        )
        for name, text in objects["ConfigMap"]["data"].items():
            # Paths in the file (basic_auth.ini's database URI) point where the pod sees them.
            (volumes["auth-config"] / name).write_text(pod.mapped("mlflow", text))
        pod.start_pod()
        try:
            yield Deployed(pod, objects, postgres, aws, admin, password)
        finally:
            pod.stop()


def test_the_server_starts_with_basic_auth_and_keeps_artifacts_in_s3(
    deployed: Deployed, tmp_path: Path
) -> None:
    search = f"{deployed.url}/api/2.0/mlflow/experiments/search"
    assert requests.get(search, params={"max_results": 1}, timeout=10).status_code == 401
    experiment = deployed.create_experiment()
    run = requests.post(
        f"{deployed.url}/api/2.0/mlflow/runs/create",
        json={"experiment_id": experiment},
        auth=deployed.admin,
        timeout=30,
    )
    run.raise_for_status()
    run_id = run.json()["run"]["info"]["run_id"]
    upload = requests.put(
        f"{deployed.url}/api/2.0/mlflow-artifacts/artifacts/{experiment}/{run_id}/artifacts/x.txt",
        data=b"kept in S3",
        auth=deployed.admin,
        timeout=30,
    )
    upload.raise_for_status()
    assert deployed.aws.keys(f"mlflow/{experiment}/{run_id}/") == [
        f"mlflow/{experiment}/{run_id}/artifacts/x.txt"
    ]
    artifacts = f"{deployed.url}/api/2.0/mlflow-artifacts/artifacts"
    listed = requests.get(
        artifacts,
        params={"path": f"{experiment}/{run_id}/artifacts"},
        auth=deployed.admin,
        timeout=30,
    )
    assert [f["path"] for f in listed.json()["files"]] == ["x.txt"]
    download = requests.get(
        f"{artifacts}/{experiment}/{run_id}/artifacts/x.txt", auth=deployed.admin, timeout=30
    )
    assert download.content == b"kept in S3"


def test_a_rotated_database_password_is_picked_up_without_a_restart(deployed: Deployed) -> None:
    server = deployed.pod.running["mlflow"]
    old = deployed.password
    new = secrets.token_urlsafe(18)
    # RDS's rotation: the database first, then the secret's current version.
    deployed.postgres.set_password(USER, new)
    deployed.aws.secretsmanager.put_secret_value(
        SecretId=deployed.aws.secret_arn,
        SecretString=json.dumps({"username": USER, "password": new}),
    )
    deployed.password = new
    assert not deployed.postgres.can_log_in(USER, old, DATABASE)
    # Every pooled session goes, so the next requests need new connections.
    assert deployed.postgres.disconnect(USER) > 0
    wait_for(deployed.can_create_experiment, 90, "a write after the password rotation")
    assert server.poll() is None, "the server kept running"
    assert "database password updated" in deployed.pod.log("pgpass-refresh")


def _schema_version(uri: str) -> str:
    engine = sqlalchemy.create_engine(uri)
    try:
        return str(_get_schema_version(engine))
    finally:
        engine.dispose()


def test_a_chart_upgrade_migrates_a_previous_versions_schema_before_the_server_starts(
    deployed: Deployed, tmp_path: Path
) -> None:
    """MLflow 3.17 creates tables a new version adds by itself, but refuses to start on columns
    it lacks (`_verify_schema`): the pre-upgrade Job migrates either way, before any new pod."""
    experiment = deployed.create_experiment()
    deployed.pod.stop("mlflow")
    # The database as the previous MLflow version left it: one migration behind.
    uri = deployed.store_uri()
    config = _get_alembic_config(uri)
    command.downgrade(config, "-1")
    head = ScriptDirectory.from_config(config).get_current_head()
    assert _schema_version(uri) != head

    job_volumes = {name: tmp_path / name for name in ("tmp", "db-credentials")}
    for path in job_volumes.values():
        path.mkdir()
    shutil.copy(deployed.postgres.certificate, job_volumes["tmp"] / CA_FILE)
    job = LocalPod(
        deployed.objects["Job"]["spec"]["template"]["spec"],
        deployed.pod.image,
        job_volumes,
        injected_env=deployed.pod.injected_env,
        logs=tmp_path,
    )
    # The password file, then `mlflow db upgrade` with the new version's image.
    assert job.run_job() == {"db-upgrade": 0}, job.log("db-upgrade")
    assert _schema_version(uri) == head

    deployed.pod.start("mlflow")
    response = requests.get(
        f"{deployed.url}/api/2.0/mlflow/experiments/get",
        params={"experiment_id": experiment},
        auth=deployed.admin,
        timeout=30,
    )
    assert response.status_code == 200, "the data is still there"


def test_every_aws_call_the_pods_made_is_one_their_role_allows(deployed: Deployed) -> None:
    """The S3 and Secrets Manager calls of the tests above (server, sidecar, upgrade Job),
    recorded, evaluated against the mlflow role of iam.tf. Last in the module: it checks what
    the others made the pods do."""
    recorded = deployed.aws.recorder.requests
    checks = s3_requests_to_authorizations(
        [r for r in recorded if is_s3(r)], kms_key_arn=TEST_KMS_KEY_ARN, kms_buckets=[BUCKET]
    ) + json_api_authorizations([r for r in recorded if not is_s3(r)])
    assert {c.operation for c in checks} >= {
        "GetSecretValue",
        "PutObject",
        "ListObjectsV2",
        "GetObject",
    }
    assert {c.principal for c in checks} == {POD_KEY}
    policy = role_policies(rds_secret_arn=deployed.aws.secret_arn)["mlflow"]
    denied = [
        f"{check.request_summary}: {decision.reason}"
        for check, decision in decisions(checks, {POD_KEY: policy})
        if not decision.allowed
    ]
    assert denied == []
