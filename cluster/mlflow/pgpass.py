"""Keeps libpq's password file in step with the database password that RDS rotates.

RDS creates the MLflow database's master password in AWS Secrets Manager and rotates it every 7
days. A password copied into the pod once would stop working at the first new connection after a
rotation. Instead this runs beside the server (a sidecar of the chart's pods, with the pod's IAM
role) and rewrites a pgpass file whenever the secret changes; the server's libpq reads that file
(PGPASSFILE) at every new connection, so pooled connections keep working and new ones use the
new password, with no restart.

    python -m cluster.mlflow.pgpass --secret-id ARN --file /var/run/mlflow-db/pgpass [--once]

The file holds one line, ``*:*:*:USER:PASSWORD``, mode 0600 (libpq ignores a password file that
others can read). Only the standard library and boto3: the MLflow image runs it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3

logger = logging.getLogger("pgpass")

# A rotation takes effect in the file within this; connections opened in between fail and are
# retried by the client (MLflow's REST clients retry on 5xx).
DEFAULT_EVERY_S = 30.0


def pgpass_line(username: str, password: str) -> str:
    """A pgpass line matching any host, port and database: ':' and '\\' escaped as libpq reads
    them."""

    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace(":", "\\:")

    if "\n" in username or "\n" in password:
        raise ValueError("a username or password with a newline cannot go in a pgpass file")
    return f"*:*:*:{escape(username)}:{escape(password)}\n"


def region_of(secret_arn: str) -> str | None:
    """The region an ARN names (arn:aws:secretsmanager:REGION:...), None for a plain name."""
    parts = secret_arn.split(":")
    return parts[3] if len(parts) > 3 and parts[0] == "arn" else None


def read_credentials(client: Any, secret_id: str) -> tuple[str, str]:
    """(username, password) of an RDS-managed secret (its SecretString is JSON with both)."""
    secret = json.loads(client.get_secret_value(SecretId=secret_id)["SecretString"])
    try:
        return str(secret["username"]), str(secret["password"])
    except KeyError as missing:
        raise ValueError(f"secret {secret_id} has no {missing} key") from None


def write_if_changed(path: Path, content: str) -> bool:
    """Replace ``path`` atomically with ``content`` (mode 0600) unless it holds it already: a
    reader sees the old file or the new, never half of one."""
    try:
        if path.read_text() == content:
            return False
    except FileNotFoundError:
        pass
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    temporary = Path(name)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(content)
        temporary.chmod(0o600)
        temporary.replace(path)
    except BaseException:
        temporary.unlink()
        raise
    return True


def refresh(client: Any, secret_id: str, path: Path) -> bool:
    """One pass: fetch the secret, rewrite the file if the password changed."""
    return write_if_changed(path, pgpass_line(*read_credentials(client, secret_id)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--secret-id", required=True, help="ARN (or name) of the RDS secret")
    parser.add_argument("--file", required=True, type=Path, help="the pgpass file to keep")
    parser.add_argument(
        "--every", type=float, default=DEFAULT_EVERY_S, help="seconds between checks"
    )
    parser.add_argument("--once", action="store_true", help="write the file once and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s pgpass %(levelname)s %(message)s")

    client = boto3.client("secretsmanager", region_name=region_of(args.secret_id))
    if args.once:
        refresh(client, args.secret_id, args.file)
        logger.info("wrote %s from %s", args.file, args.secret_id)
        return 0
    while True:
        try:
            if refresh(client, args.secret_id, args.file):
                logger.info("database password updated in %s", args.file)
        except Exception as error:  # keep the last good file and try again on the next tick
            logger.warning("could not refresh %s from %s: %s", args.file, args.secret_id, error)
        time.sleep(args.every)


if __name__ == "__main__":
    sys.exit(main())
