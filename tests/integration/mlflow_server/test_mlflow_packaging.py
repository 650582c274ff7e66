"""What the server needs ships with the server, not with every Ray pod: the `server` extra, the
lock files, the images, and the client settings a Ray Job carries. Checked on the files."""

from __future__ import annotations

import ast
import re
import tomllib

from app.tracking import FORWARDED_ENV
from cluster.mlflow import launcher
from cluster.mlflow.settings import CLIENT_ENV

from .conftest import REPO

SERVER_ONLY = {"psycopg2-binary", "flask-wtf", "wtforms"}


def _locked(name: str) -> set[str]:
    text = (REPO / name).read_text()
    return {m.lower() for m in re.findall(r"^([A-Za-z0-9._-]+)==", text, re.MULTILINE)}


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\s]", r, maxsplit=1)[0].lower() for r in requirements}


def test_server_packages_are_an_extra_that_dev_includes() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    server = project["optional-dependencies"]["server"]
    assert {"mlflow[auth]", "psycopg2-binary"} <= _requirement_names(server)
    assert set(server) <= set(project["optional-dependencies"]["dev"])
    base = _requirement_names(project["dependencies"])
    assert "mlflow" in base  # clients log to the server with plain mlflow
    assert not base & {"mlflow[auth]", "psycopg2-binary"}


def test_base_lock_leaves_out_what_only_the_server_needs() -> None:
    assert not _locked("requirements.lock") & SERVER_ONLY
    assert _locked("requirements-dev.lock") >= SERVER_ONLY
    # The Ray image installs the base lock only.
    ray_image = (REPO / "cluster" / "docker" / "Dockerfile").read_text()
    assert "requirements.lock" in ray_image
    assert "requirements-dev.lock" not in ray_image


def test_server_images_install_mlflow_with_the_auth_extra() -> None:
    """MLflow 3.17 needs Flask-WTF (the auth extra) for `--app-name basic-auth`."""
    for dockerfile in ("cluster/local/Dockerfile", "cluster/docker/mlflow.Dockerfile"):
        text = (REPO / dockerfile).read_text()
        assert re.search(r'"mlflow\[auth\]', text), dockerfile
        assert "psycopg2-binary" in text, dockerfile


def _cluster_imports(module: str) -> set[str]:
    path = REPO / (module.replace(".", "/") + ".py")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in ("app", "tests", "cluster")}
    return found


def test_the_launcher_image_copies_every_module_the_launcher_imports() -> None:
    """cluster/local/Dockerfile copies single files: one the launcher imports and the image
    lacks would only show when the container starts."""
    seen: set[str] = set()
    todo = ["cluster.mlflow.stack"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for name in _cluster_imports(module):
            assert name.split(".")[0] == "cluster", f"{module} imports {name}: not in the image"
            if (REPO / (name.replace(".", "/") + ".py")).is_file():
                todo.append(name)
    # The server imports the login basic_auth.ini names (the launcher writes its name).
    seen.add(launcher.GUARDED_LOGIN.split(":")[0])
    needed = {module.replace(".", "/") + ".py" for module in seen}
    dockerfile = (REPO / "cluster" / "local" / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) ", dockerfile, re.MULTILINE))
    assert copied == needed


def test_a_ray_job_carries_the_client_settings_of_the_server() -> None:
    """One list of forwarded variables (app/tracking.py), used by Ray workers and by
    cluster/mlflow/runtime_env.py; it holds the settings every client of the server needs."""
    assert set(CLIENT_ENV) <= set(FORWARDED_ENV)
    assert len(set(FORWARDED_ENV)) == len(FORWARDED_ENV)
    source = (REPO / "cluster" / "mlflow" / "runtime_env.py").read_text()
    assert "from app.tracking import FORWARDED_ENV" in source
