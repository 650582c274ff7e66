"""The S3 artifact store: check that the bucket answers to the configured keys, copy the artifact
prefix to and from a directory (backup and restore), and provision the development S3 endpoint
(moto) the launcher starts when no artifact store is configured."""

from __future__ import annotations

import json
from pathlib import Path

import requests
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from cluster.mlflow.settings import ENV_VARS, Connection, LauncherError, S3Access, split_s3_uri

# Error codes S3 and MinIO answer with for an unknown key, a wrong secret or a denied key.
CREDENTIAL_ERROR_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "403"}
)


def _client_error(error: ClientError, bucket: str, prefix: str, where: str) -> LauncherError:
    code = str(error.response.get("Error", {}).get("Code", ""))
    if code in ("NoSuchBucket", "404"):
        return LauncherError(
            f"artifact bucket '{bucket}' does not exist at {where}: create it, or fix "
            f"{ENV_VARS['artifacts_destination']}"
        )
    if code in CREDENTIAL_ERROR_CODES:
        return LauncherError(
            f"S3 credentials rejected by {where} for bucket '{bucket}' ({code}): check "
            f"{ENV_VARS['aws_access_key_id']} / {ENV_VARS['aws_secret_access_key']}"
        )
    return LauncherError(f"cannot list s3://{bucket}/{prefix} at {where}: {error}")


def check_bucket(connection: Connection) -> None:
    """Fail with a clear message unless the destination bucket exists and the keys may list it."""
    bucket, prefix = split_s3_uri(connection.artifacts_destination)
    where = connection.s3.endpoint_url or "AWS S3"
    try:
        connection.s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except ClientError as error:
        raise _client_error(error, bucket, prefix, where) from None
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


def provision_local_s3(endpoint: str, bucket: str) -> S3Access:
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
