"""Users and permissions on the real server: created by cluster/mlflow/users.py from a YAML file,
then checked over the REST API the way any client reaches it.

The users stand for the platform's identities (docs/deploy-aws.md#who-can-do-what): the reader
for the serving user and for people (READ on the registered model), the editor for the training
jobs (EDIT: they register versions and set @challenger), the manager for the promotion job
(MANAGE: the only one who moves @champion), and the admin for break-glass."""

from __future__ import annotations

import secrets
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.mlflow.settings import LEGACY_DEFAULT_ADMIN_PASSWORD

from .conftest import Stack

pytestmark = pytest.mark.integration

API = "/api/2.0/mlflow"
GRANT = "/api/3.0/mlflow/users/permissions/grant"


@dataclass(frozen=True)
class World:
    """Three users (READ, EDIT, MANAGE) and what they are granted on."""

    reader: tuple[str, str]
    editor: tuple[str, str]
    manager: tuple[str, str]
    experiment_id: str
    run_id: str
    model: str


@pytest.fixture(scope="module")
def world(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> World:
    suffix = secrets.token_hex(3)
    with stack.as_admin() as admin:
        experiment = f"perm-{suffix}"
        experiment_id = admin.create_experiment(experiment)
        run_id = admin.create_run(experiment_id).info.run_id
        model = f"production-{suffix}"
        admin.create_registered_model(model)
        admin.create_model_version(model, f"runs:/{run_id}/model", run_id=run_id)
        admin.create_model_version(model, f"runs:/{run_id}/model", run_id=run_id)
        admin.set_registered_model_alias(model, "champion", "1")

    names = {role: f"{role}-{suffix}" for role in ("reader", "editor", "manager")}
    passwords = {role: secrets.token_urlsafe(16) for role in names}
    users_file = tmp_path_factory.mktemp("users") / "users.yaml"
    users_file.write_text(
        textwrap.dedent(f"""\
        users:
          - username: {names["reader"]}
            password_env: PW_READER
            experiments: {{{experiment}: READ}}
            registered_models: {{{model}: READ}}
          - username: {names["editor"]}
            password_env: PW_EDITOR
            experiments: {{{experiment}: EDIT}}
            registered_models: {{{model}: EDIT}}
          - username: {names["manager"]}
            password_env: PW_MANAGER
            experiments: {{"*": MANAGE}}
            registered_models: {{"*": MANAGE}}
        """)
    )
    for run in ("first", "again"):  # re-running the script is safe: same users, same grants
        done = stack.run_script(
            [sys.executable, "-m", "cluster.mlflow.users", "--file", str(users_file)],
            MLFLOW_ADMIN_USERNAME=stack.admin[0],
            MLFLOW_ADMIN_PASSWORD=stack.admin[1],
            PW_READER=passwords["reader"],
            PW_EDITOR=passwords["editor"],
            PW_MANAGER=passwords["manager"],
        )
        assert done.returncode == 0, (run, done.stderr)
    assert done.stdout.count("exists, password updated") == 3
    return World(
        reader=(names["reader"], passwords["reader"]),
        editor=(names["editor"], passwords["editor"]),
        manager=(names["manager"], passwords["manager"]),
        experiment_id=experiment_id,
        run_id=run_id,
        model=model,
    )


def _log(stack: Stack, user: tuple[str, str], run_id: str, key: str) -> int:
    metric = {"key": key, "value": 1.5, "timestamp": int(time.time() * 1000), "step": 0}
    body = {"run_id": run_id, "metrics": [metric]}
    return stack.call("POST", f"{API}/runs/log-batch", user, json=body).status_code


def _alias(
    stack: Stack, user: tuple[str, str], model: str, alias: str = "champion", version: str = "2"
) -> int:
    body = {"name": model, "alias": alias, "version": version}
    return stack.call("POST", f"{API}/registered-models/alias", user, json=body).status_code


def _delete_alias(stack: Stack, user: tuple[str, str], model: str, alias: str) -> int:
    body = {"name": model, "alias": alias}  # in the body, as MlflowClient sends it
    return stack.call("DELETE", f"{API}/registered-models/alias", user, json=body).status_code


def _register(stack: Stack, user: tuple[str, str], world: World) -> int:
    body = {"name": world.model, "source": f"runs:/{world.run_id}/model", "run_id": world.run_id}
    return stack.call("POST", f"{API}/model-versions/create", user, json=body).status_code


def _grant(stack: Stack, user: tuple[str, str], grantee: str, experiment_id: str) -> int:
    body = {
        "username": grantee,
        "resource_type": "experiment",
        "resource_id": experiment_id,
        "permission": "EDIT",
    }
    return stack.call("POST", GRANT, user, json=body).status_code


def _alias_version(stack: Stack, model: str, alias: str = "champion") -> str | None:
    answer = stack.call(
        "GET", f"{API}/registered-models/alias", stack.admin, params={"name": model, "alias": alias}
    )
    return str(answer.json()["model_version"]["version"]) if answer.ok else None


def _champion_version(stack: Stack, model: str) -> str:
    return str(_alias_version(stack, model))


def test_unauthenticated_and_wrong_password_get_401(stack: Stack, world: World) -> None:
    path = f"{API}/experiments/get"
    params = {"experiment_id": world.experiment_id}
    assert stack.call("GET", path, None, params=params).status_code == 401
    assert (
        stack.call("GET", path, (world.reader[0], "not-the-password"), params=params).status_code
        == 401
    )
    assert stack.call("GET", path, world.reader, params=params).status_code == 200


def test_read_user_cannot_log_delete_or_move_an_alias(stack: Stack, world: World) -> None:
    assert stack.call("GET", f"{API}/runs/get", world.reader, params={"run_id": world.run_id}).ok
    assert _log(stack, world.reader, world.run_id, "reader_metric") == 403
    delete = stack.call("POST", f"{API}/runs/delete", world.reader, json={"run_id": world.run_id})
    assert delete.status_code == 403
    assert _alias(stack, world.reader, world.model) == 403
    assert _alias(stack, world.reader, world.model, "challenger") == 403
    assert _register(stack, world.reader, world) == 403
    assert _champion_version(stack, world.model) == "1"
    run = stack.call("GET", f"{API}/runs/get", stack.admin, params={"run_id": world.run_id}).json()
    assert run["run"]["info"]["lifecycle_stage"] == "active"
    assert "reader_metric" not in str(run)


def test_edit_user_logs_but_cannot_delete_manage_permissions_or_move_an_alias(
    stack: Stack, world: World
) -> None:
    assert _log(stack, world.editor, world.run_id, "editor_metric") == 200
    history = stack.call(
        "GET",
        f"{API}/metrics/get-history",
        stack.admin,
        params={"run_id": world.run_id, "metric_key": "editor_metric"},
    ).json()
    assert [m["value"] for m in history["metrics"]] == [1.5]
    delete = stack.call("POST", f"{API}/runs/delete", world.editor, json={"run_id": world.run_id})
    assert delete.status_code == 403
    assert _grant(stack, world.editor, world.reader[0], world.experiment_id) == 403


def test_training_identity_registers_and_sets_challenger_but_cannot_move_champion(
    stack: Stack, world: World
) -> None:
    """EDIT on the model is what MLflow asks for every alias move; the promotion gate
    (cluster/mlflow/alias_guard.py) keeps all but @challenger for MANAGE."""
    assert _register(stack, world.editor, world) == 200
    assert _alias(stack, world.editor, world.model, "challenger", "2") == 200
    assert _alias_version(stack, world.model, "challenger") == "2"
    refused = stack.call(
        "POST",
        f"{API}/registered-models/alias",
        world.editor,
        json={"name": world.model, "alias": "champion", "version": "2"},
    )
    assert refused.status_code == 403
    assert "needs MANAGE on the registered model" in refused.json()["message"]
    assert _alias(stack, world.editor, world.model, "production", "2") == 403
    assert _delete_alias(stack, world.editor, world.model, "champion") == 403
    rename = {"name": world.model, "new_name": f"{world.model}-renamed"}
    assert (
        stack.call("POST", f"{API}/registered-models/rename", world.editor, json=rename).status_code
        == 403
    )
    assert _champion_version(stack, world.model) == "1"
    assert _alias_version(stack, world.model, "production") is None


def test_manage_user_grants_permissions_and_moves_aliases(stack: Stack, world: World) -> None:
    with stack.as_admin() as admin:
        other_experiment = admin.create_experiment(f"perm-other-{secrets.token_hex(3)}")
        other_run = admin.create_run(other_experiment).info.run_id
    assert _log(stack, world.reader, other_run, "before_grant") == 403
    assert _grant(stack, world.manager, world.reader[0], other_experiment) == 200
    assert _log(stack, world.reader, other_run, "after_grant") == 200
    assert _log(stack, world.reader, world.run_id, "still_read_only") == 403

    assert _alias(stack, world.manager, world.model) == 200
    assert _champion_version(stack, world.model) == "2"
    assert _alias(stack, world.manager, world.model, "staging", "1") == 200
    assert _delete_alias(stack, world.manager, world.model, "staging") == 200
    assert _alias_version(stack, world.model, "staging") is None


def test_client_authenticates_from_netrc(stack: Stack, world: World, tmp_path: Path) -> None:
    """The password can live in ~/.netrc instead of MLFLOW_TRACKING_PASSWORD."""
    netrc = tmp_path / ".netrc"
    netrc.write_text(f"machine 127.0.0.1 login {world.reader[0]} password {world.reader[1]}\n")
    netrc.chmod(0o600)
    code = f"import mlflow; print(mlflow.MlflowClient().get_run({world.run_id!r}).info.run_id)"
    done = stack.run_script(
        [sys.executable, "-c", code], HOME=str(tmp_path), MLFLOW_TRACKING_URI=stack.tracking_uri
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(world.run_id)


def test_users_script_refuses_the_default_admin_password(stack: Stack, tmp_path: Path) -> None:
    users_file = tmp_path / "users.yaml"
    users_file.write_text("users: [{username: someone, password_env: PW}]\n")
    done = stack.run_script(
        [sys.executable, "-m", "cluster.mlflow.users", "--file", str(users_file)],
        MLFLOW_ADMIN_PASSWORD=LEGACY_DEFAULT_ADMIN_PASSWORD,
        PW="a-long-enough-password",
    )
    assert done.returncode != 0
    assert "MLFLOW_ADMIN_PASSWORD" in done.stderr
    assert "default admin password" in done.stderr
    listing = stack.call(
        "GET", "/api/2.0/mlflow/users/get", stack.admin, params={"username": "someone"}
    )
    assert listing.status_code == 404
