"""What `make mlflow-up` started, recorded in the run directory (``MLFLOW_STACK_DIR``, default
``.mlflow-stack/`` in the repository): the store, the bucket, the URI, the pids, and the
development S3 endpoint's credentials. `down`, `env`, the users script and the backup scripts
find the stack there. The file is mode 0600: it holds development credentials."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from cluster.mlflow.processes import ProcessRecord
from cluster.mlflow.settings import Connection, LauncherError, StoreSettings

STATE_FILE = "state.json"
DEFAULT_RUN_DIR = Path(__file__).resolve().parents[2] / ".mlflow-stack"


class StackState(Connection):
    """What `up` started; saved in the run directory (mode 0600: it holds dev credentials)."""

    tracking_uri: str
    flask_secret_key: str
    server: ProcessRecord | None = None
    s3_endpoint: ProcessRecord | None = None


def run_dir() -> Path:
    return Path(os.environ.get("MLFLOW_STACK_DIR") or DEFAULT_RUN_DIR)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)


def load_state(run_dir: Path) -> StackState | None:
    path = run_dir / STATE_FILE
    return StackState.model_validate_json(path.read_text()) if path.exists() else None


def save_state(run_dir: Path, state: StackState) -> None:
    write_private(run_dir / STATE_FILE, state.model_dump_json(indent=2))


def require_state(run_dir: Path) -> StackState:
    state = load_state(run_dir)
    if state is None:
        raise LauncherError(f"no MLflow stack recorded in {run_dir}")
    return state


def resolve_connection(run_dir: Path, environ: Mapping[str, str]) -> Connection:
    """The store and bucket of the stack recorded in ``run_dir``, else those of the settings in
    the environment (backup and restore use this)."""
    state = load_state(run_dir)
    if state is not None:
        return Connection.model_validate(state.model_dump())
    return StoreSettings.from_env(environ).connection()
