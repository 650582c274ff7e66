"""Start, stop and inspect the central MLflow server (behind `make mlflow-up` / `mlflow-down`).

Run from the repository root: ``python -m cluster.mlflow.stack up|down|status|...``.
Settings come from the environment (see docs/mlflow-server.md); what `up` started is recorded in
the run directory (``MLFLOW_STACK_DIR``, default ``.mlflow-stack/`` in the repository), which is
where `down`, `env` and the backup scripts find it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import tempfile
from pathlib import Path

from cluster.mlflow import launcher
from cluster.mlflow.postgres import ensure_database, libpq_env
from cluster.mlflow.processes import is_running
from cluster.mlflow.s3_artifacts import download_artifacts, upload_artifacts
from cluster.mlflow.settings import CLIENT_ENV, LauncherError, ServerSettings
from cluster.mlflow.stack_state import load_state, resolve_connection, run_dir


def _up(_: argparse.Namespace) -> None:
    settings = ServerSettings.from_env(os.environ)
    state = launcher.start_stack(settings, run_dir())
    print(f"MLflow server: {state.tracking_uri}")
    client_env = " ".join(f"{name}={value}" for name, value in CLIENT_ENV.items())
    print(f"  export MLFLOW_TRACKING_URI={state.tracking_uri} {client_env}")
    print("  export MLFLOW_TRACKING_USERNAME=<user> MLFLOW_TRACKING_PASSWORD=<password>")
    store = libpq_env(state.backend_store_uri)
    print(f"  store: database {store['PGDATABASE']} on {store['PGHOST']}")
    print(f"  artifacts: {state.artifacts_destination} at {state.s3.endpoint_url or 'AWS S3'}")


def _down(_: argparse.Namespace) -> None:
    stopped = launcher.stop_stack(run_dir())
    print("stopped: " + ", ".join(stopped) if stopped else "nothing was running")


def _start_server(_: argparse.Namespace) -> None:
    state = launcher.start_server(ServerSettings.from_env(os.environ), run_dir())
    print(f"MLflow server: {state.tracking_uri}")


def _stop_server(_: argparse.Namespace) -> None:
    print("stopped" if launcher.stop_server(run_dir()) else "the MLflow server was not running")


def _status(_: argparse.Namespace) -> None:
    state = load_state(run_dir())
    if state is None or not is_running(state.server):
        print("MLflow server: not running")
        sys.exit(1)
    print(f"MLflow server: running at {state.tracking_uri}")
    if is_running(state.s3_endpoint):
        print(f"development S3 endpoint: running at {state.s3.endpoint_url}")


def _serve(_: argparse.Namespace) -> None:
    launcher.serve(ServerSettings.from_env(os.environ), Path(tempfile.mkdtemp(prefix="mlflow-")))


def _env(_: argparse.Namespace) -> None:
    """Shell exports for scripts: PG* for psql / pg_dump / pg_restore, and the bucket."""
    connection = resolve_connection(run_dir(), os.environ)
    exports = {
        **libpq_env(connection.backend_store_uri),
        "MLFLOW_BACKEND_STORE_URI": connection.backend_store_uri,
        "MLFLOW_ARTIFACTS_DESTINATION": connection.artifacts_destination,
        **connection.s3.env(),
    }
    for name, value in exports.items():
        print(f"export {name}={shlex.quote(value)}")


def _create_db(args: argparse.Namespace) -> None:
    connection = resolve_connection(run_dir(), os.environ)
    ensure_database(connection.backend_store_uri, require_empty=args.empty)


def _artifacts(args: argparse.Namespace) -> None:
    connection = resolve_connection(run_dir(), os.environ)
    if args.direction == "download":
        count = download_artifacts(connection, args.directory)
    else:
        count = upload_artifacts(connection, args.directory)
    print(f"{args.direction}ed {count} artifact files ({connection.artifacts_destination})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the stack in the background, print its URI")
    commands.add_parser("down", help="stop what `up` started")
    commands.add_parser("status", help="exit 0 if the server is running")
    commands.add_parser("stop-server", help="stop the server only (e.g. for a restore)")
    commands.add_parser("start-server", help="start the server of a stack stopped by stop-server")
    commands.add_parser("serve", help="check, migrate and run the server in the foreground")
    commands.add_parser("env", help="print shell exports for the store and the bucket")
    create_db = commands.add_parser("create-db", help="create the store's database if missing")
    create_db.add_argument("--empty", action="store_true", help="fail if it holds tables")
    artifacts = commands.add_parser("artifacts", help="copy the artifact prefix to / from a dir")
    artifacts.add_argument("direction", choices=["download", "upload"])
    artifacts.add_argument("directory", type=Path)
    handlers = {
        "up": _up,
        "down": _down,
        "status": _status,
        "stop-server": _stop_server,
        "start-server": _start_server,
        "serve": _serve,
        "env": _env,
        "create-db": _create_db,
        "artifacts": _artifacts,
    }
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        handlers[args.command](args)
    except LauncherError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
