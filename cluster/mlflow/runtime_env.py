"""Print runtime_env.yaml as JSON plus the caller's MLflow client settings, for a Ray Job:

    ray job submit --working-dir . --runtime-env-json "$(python -m cluster.mlflow.runtime_env)" \\
        -- python jobs/train.py ...

The job then logs to the submitting user's server as that user: MLFLOW_TRACKING_URI and the
username from the environment, the password from MLFLOW_TRACKING_PASSWORD or, failing that, from
~/.netrc. Nothing is written to a file; the Ray dashboard (behind its token) shows job runtime
environments to whoever may read them.
"""

from __future__ import annotations

import json
import netrc
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from app.tracking import FORWARDED_ENV
from cluster.mlflow.settings import CLIENT_ENV

RUNTIME_ENV = Path(__file__).resolve().parents[2] / "runtime_env.yaml"


def _netrc_login(uri: str, environ: Mapping[str, str]) -> tuple[str, str] | None:
    path = Path(environ.get("NETRC") or Path(environ.get("HOME", "~")).expanduser() / ".netrc")
    host = urlparse(uri).hostname
    if not host or not path.is_file():
        return None
    entry = netrc.netrc(str(path)).authenticators(host)
    return (entry[0], entry[2]) if entry and entry[2] else None


def runtime_env(environ: Mapping[str, str]) -> dict[str, Any]:
    env: dict[str, Any] = yaml.safe_load(RUNTIME_ENV.read_text()) or {}
    variables = {**CLIENT_ENV, **{k: environ[k] for k in FORWARDED_ENV if environ.get(k)}}
    uri = variables.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith("http") and "MLFLOW_TRACKING_PASSWORD" not in variables:
        login = _netrc_login(uri, environ)
        if login:
            variables.setdefault("MLFLOW_TRACKING_USERNAME", login[0])
            variables["MLFLOW_TRACKING_PASSWORD"] = login[1]
    env["env_vars"] = {**env.get("env_vars", {}), **variables}
    return env


def main() -> None:
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        sys.exit("error: set MLFLOW_TRACKING_URI (see .env.remote)")
    print(json.dumps(runtime_env(os.environ)))


if __name__ == "__main__":
    main()
