"""The PostgreSQL backend store: connect, create the database when missing, apply MLflow's schema
migrations, and point libpq's tools (psql, pg_dump, pg_restore) at it. A password never appears
in a command line or a config file: it travels as PGPASSWORD, which libpq reads."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2 import sql
from sqlalchemy.engine import make_url

from cluster.mlflow.processes import tail
from cluster.mlflow.settings import LauncherError

logger = logging.getLogger(__name__)


def without_password(uri: str) -> tuple[str, str | None]:
    """The URI minus its password, and the password: passed as PGPASSWORD (libpq reads it), so
    that no secret appears in a command line or a config file."""
    url = make_url(uri)
    return url.set(password=None).render_as_string(hide_password=False), url.password


def password_env(uri: str) -> dict[str, str]:
    """``{"PGPASSWORD": ...}`` for a URI with a password, else nothing."""
    password = without_password(uri)[1]
    return {"PGPASSWORD": password} if password else {}


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
def _connect(uri: str, database: str | None = None) -> Iterator[Any]:
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


def _refuse_tables(uri: str, name: str) -> None:
    with _connect(uri) as conn, conn.cursor() as cur:
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


def ensure_database(uri: str, *, require_empty: bool = False) -> bool:
    """Create the store's database when missing (True if created). With ``require_empty``,
    refuse a database that already holds tables (a restore needs an empty one)."""
    name = make_url(uri).database
    if not name:
        raise LauncherError(f"the backend store URI names no database: {without_password(uri)[0]}")
    with _connect(uri, database="postgres") as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            logger.info("created PostgreSQL database %s", name)
            return True
    if require_empty:
        _refuse_tables(uri, name)
    return False


def upgrade_database(uri: str, log: Path) -> None:
    """Apply MLflow's schema migrations (creates the tables on a new database)."""
    bare_uri = without_password(uri)[0]
    with log.open("ab") as out:
        done = subprocess.run(  # noqa: S603 - our interpreter, fixed arguments
            [sys.executable, "-m", "mlflow", "db", "upgrade", bare_uri],
            env={**os.environ, **password_env(uri)},
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=600,
        )
    if done.returncode != 0:
        raise LauncherError(f"database migration failed:\n{tail(log)}")
