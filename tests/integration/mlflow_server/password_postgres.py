"""A private PostgreSQL server that checks passwords and requires TLS, as RDS with
`rds.force_ssl` does: SCRAM over TCP (TLS only), trust over its own Unix socket for the test's
administration. The shared test server trusts every connection, so a wrong password would pass
there unnoticed.

Started with the PostgreSQL server binaries (`pg_config --bindir`, or /usr/lib/postgresql/N/bin)
as the `postgres` user when the
tests run as root (the server refuses to run as root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2 import sql

from tests.support import free_port


@dataclass(frozen=True)
class PasswordPostgres:
    data_dir: Path
    port: int

    @property
    def certificate(self) -> Path:
        """The server's self-signed certificate: the CA bundle its clients verify it with."""
        return self.data_dir / "server.crt"

    def admin(self, database: str = "postgres") -> Any:
        """A superuser connection over the Unix socket (trust)."""
        conn = psycopg2.connect(
            host=str(self.data_dir), port=self.port, user="postgres", dbname=database
        )
        conn.autocommit = True
        return conn

    def create_owner(self, user: str, password: str, database: str) -> None:
        """A login role with ``password`` owning a new ``database`` (as RDS's master user)."""
        with contextlib.closing(self.admin()) as conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(user)),
                (password,),
            )
            cur.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(database), sql.Identifier(user)
                )
            )

    def set_password(self, user: str, password: str) -> None:
        with contextlib.closing(self.admin()) as conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(user)), (password,)
            )

    def disconnect(self, user: str) -> int:
        """End every session of ``user`` (as a failover or a restart does); how many."""
        with contextlib.closing(self.admin()) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = %s",
                (user,),
            )
            return int(cur.fetchone()[0])

    def can_log_in(self, user: str, password: str, database: str) -> bool:
        try:
            psycopg2.connect(
                host="127.0.0.1",
                port=self.port,
                user=user,
                password=password,
                dbname=database,
                sslmode="require",
                connect_timeout=5,
            ).close()
        except psycopg2.OperationalError:
            return False
        return True


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _bindir() -> Path | None:
    """Where initdb is: `pg_config --bindir`, or Debian's and Ubuntu's versioned directories
    (newest first) where pg_config is not installed."""
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        found = Path(subprocess.check_output([pg_config, "--bindir"], text=True).strip())
        if (found / "initdb").exists():
            return found
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
    )
    return versions[-1].parent if versions else None


@contextlib.contextmanager
def password_postgres() -> Iterator[PasswordPostgres]:
    bindir = _bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL's server binaries (pg_config --bindir) are not installed")
    data_dir = Path(tempfile.mkdtemp(prefix="rayvision-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data_dir, "postgres", "postgres")
    port = free_port()
    try:
        subprocess.run(
            _as_postgres(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data_dir),
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=reject",
                ]
            ),
            check=True,
            capture_output=True,
        )
        # A self-signed certificate for 127.0.0.1, its own CA (`certificate`): clients verify it
        # with sslmode=verify-full and sslrootcert, as the chart's pods verify RDS's.
        subprocess.run(
            _as_postgres(
                [
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                    "-keyout",
                    str(data_dir / "server.key"),
                    "-out",
                    str(data_dir / "server.crt"),
                ]
            ),
            check=True,
            capture_output=True,
        )
        (data_dir / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n"
        )
        with (data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {port}\n"
                f"unix_socket_directories = '{data_dir}'\nssl = on\n"
                "password_encryption = 'scram-sha-256'\n"
            )
        subprocess.run(
            _as_postgres(
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data_dir),
                    "-l",
                    str(data_dir / "server.log"),
                    "-w",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        try:
            yield PasswordPostgres(data_dir, port)
        finally:
            subprocess.run(
                _as_postgres(
                    [str(bindir / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "-w", "stop"]
                ),
                check=False,
                capture_output=True,
            )
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
