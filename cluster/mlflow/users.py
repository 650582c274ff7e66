"""Create MLflow users and grant READ / EDIT / MANAGE per experiment and per registered model.

    python -m cluster.mlflow.users --file cluster/mlflow/users.example.yaml
    python -m cluster.mlflow.users --user ml-engineer-1 --password-env MLFLOW_PASSWORD_ML_1 \\
        --experiment '*=EDIT' --model '*=EDIT'

Runs as the admin (MLFLOW_ADMIN_USERNAME / MLFLOW_ADMIN_PASSWORD) against MLFLOW_TRACKING_URI,
or against the stack `make mlflow-up` started. Passwords come from the environment variables the
file names, never from the file. Safe to re-run: an existing user gets the password from the
environment again and each listed grant is replaced. Experiments and registered models that do not
exist yet are created so that they can be granted on; ``*`` grants on all of them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cluster.mlflow.settings import ENV_VARS, check_password
from cluster.mlflow.stack_state import load_state, run_dir

Level = Literal["READ", "USE", "EDIT", "MANAGE"]
ALL = "*"


class UserSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
    password_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    admin: bool = False  # true makes the user an admin; false leaves an admin as it is
    experiments: dict[str, Level] = Field(default_factory=dict)
    registered_models: dict[str, Level] = Field(default_factory=dict)


class UsersFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    users: list[UserSpec] = Field(min_length=1)


def _already_exists(error: MlflowException) -> bool:
    return error.error_code == "RESOURCE_ALREADY_EXISTS"


def _experiment_id(tracking: MlflowClient, name: str) -> str:
    if name == ALL:
        return ALL
    experiment = tracking.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    print(f"  created experiment {name}")
    return str(tracking.create_experiment(name))


def _model_name(tracking: MlflowClient, name: str) -> str:
    if name != ALL:
        try:
            tracking.create_registered_model(name)
            print(f"  created registered model {name}")
        except MlflowException as error:
            if not _already_exists(error):
                raise
    return name


def _grant(auth: AuthServiceClient, username: str, kind: str, resource: str, level: str) -> None:
    try:
        auth.grant_user_permission(username, kind, resource, level)
    except MlflowException as error:
        if not _already_exists(error):
            raise
        auth.revoke_user_permission(username, kind, resource)
        auth.grant_user_permission(username, kind, resource, level)


def apply(spec: UsersFile, tracking_uri: str, environ: Mapping[str, str]) -> None:
    """Create or update every user in ``spec`` and grant what it lists (as the admin, whose
    credentials the MLflow client reads from MLFLOW_TRACKING_USERNAME / _PASSWORD)."""
    auth = AuthServiceClient(tracking_uri)
    tracking = MlflowClient(tracking_uri)
    for user in spec.users:
        password = environ.get(user.password_env, "")
        try:
            check_password(password)
        except ValueError as error:
            raise SystemExit(
                f"error: {user.password_env} (password of {user.username}) {error}"
            ) from None
        try:
            auth.create_user(user.username, password)
            print(f"user {user.username}: created")
        except MlflowException as error:
            if not _already_exists(error):
                raise
            auth.update_user_password(user.username, password)
            print(f"user {user.username}: exists, password updated")
        if user.admin:
            auth.update_user_admin(user.username, True)
        for name, level in user.experiments.items():
            _grant(auth, user.username, "experiment", _experiment_id(tracking, name), level)
            print(f"  experiment {name}: {level}")
        for name, level in user.registered_models.items():
            _grant(auth, user.username, "registered_model", _model_name(tracking, name), level)
            print(f"  registered model {name}: {level}")


def _grants(values: list[str], flag: str) -> dict[str, str]:
    grants = {}
    for value in values:
        name, sep, level = value.rpartition("=")
        if not sep or not name:
            raise SystemExit(f"error: {flag} takes NAME=LEVEL, got {value!r}")
        grants[name] = level
    return grants


def _spec(args: argparse.Namespace) -> UsersFile:
    try:
        if args.file:
            return UsersFile.model_validate(yaml.safe_load(args.file.read_text()))
        if not (args.user and args.password_env):
            raise SystemExit("error: give --file, or --user with --password-env")
        user = {
            "username": args.user,
            "password_env": args.password_env,
            "admin": args.admin,
            "experiments": _grants(args.experiment, "--experiment"),
            "registered_models": _grants(args.model, "--model"),
        }
        return UsersFile.model_validate({"users": [user]})
    except ValidationError as error:
        raise SystemExit(f"error: invalid users spec:\n{error}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, help="YAML file: users: [{username, ...}]")
    parser.add_argument("--user", help="one user, given by flags")
    parser.add_argument("--password-env", help="environment variable holding its password")
    parser.add_argument("--admin", action="store_true", help="make the user an admin")
    parser.add_argument(
        "--experiment", action="append", default=[], help="NAME=LEVEL (NAME '*': all)"
    )
    parser.add_argument("--model", action="append", default=[], help="NAME=LEVEL (NAME '*': all)")
    args = parser.parse_args(argv)
    spec = _spec(args)

    admin_password = os.environ.get(ENV_VARS["admin_password"], "")
    try:
        check_password(admin_password)
    except ValueError as error:
        raise SystemExit(f"error: {ENV_VARS['admin_password']} {error}") from None
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri and (state := load_state(run_dir())) is not None:
        tracking_uri = state.tracking_uri
    if not tracking_uri:
        raise SystemExit("error: set MLFLOW_TRACKING_URI, or start the server (make mlflow-up)")
    # The MLflow clients read the credentials from these variables.
    os.environ["MLFLOW_TRACKING_USERNAME"] = os.environ.get(ENV_VARS["admin_username"], "admin")
    os.environ["MLFLOW_TRACKING_PASSWORD"] = admin_password
    try:
        apply(spec, tracking_uri, os.environ)
    except MlflowException as error:
        print(f"error: {error.message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
