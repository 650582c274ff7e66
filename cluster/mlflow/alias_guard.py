"""MLflow's basic-auth login, plus the promotion gate as a permission: the server's
``authorization_function`` (basic_auth.ini; the launcher and the Helm chart configure it).

MLflow lets anyone with EDIT on a registered model move its aliases, and training jobs need EDIT
there to register versions. So EDIT alone would let a training job, or anyone holding its
credentials, point ``@champion`` past the evaluation gate. This function refuses, for a user who
is neither an admin nor MANAGE on the model:

- setting or deleting any alias but the training-owned ``@challenger`` (what the promotion job
  moves, ``@champion`` and the rest, needs MANAGE: the promotion job's identity ``ray-promote``);
- renaming a registered model: a renamed model's name could be registered again by its renamer,
  who would then hold MANAGE on the new one and could give it a ``@champion``.

Everything else is MLflow's own authorization, unchanged (it runs after this function)."""

from __future__ import annotations

import json

from flask import Response, g, request
from mlflow.server import auth as mlflow_auth
from werkzeug.datastructures import Authorization

# Set by the training jobs (EDIT suffices); promote.py reads it.
TRAINING_ALIASES = frozenset({"challenger"})
_ALIAS_PATH = "/mlflow/registered-models/alias"
_RENAME_PATH = "/mlflow/registered-models/rename"
_CHECKING = "_rayvision_alias_guard"


def _guarded_action() -> str | None:
    """What this request would do that needs MANAGE, or None."""
    path, method = request.path.rstrip("/"), request.method
    if path.endswith(_ALIAS_PATH) and method in {"POST", "DELETE"}:
        alias = mlflow_auth._get_request_param("alias")
        if alias not in TRAINING_ALIASES:
            verb = "setting" if method == "POST" else "deleting"
            return f"{verb} @{alias} of {mlflow_auth._get_request_param('name')}"
    if path.endswith(_RENAME_PATH) and method == "POST":
        return f"renaming {mlflow_auth._get_request_param('name')}"
    return None


def _may_manage_model() -> bool:
    # MLflow's own lookups authenticate the request again, through this function: the flag
    # makes those nested calls plain logins instead of recursing into the guard.
    setattr(g, _CHECKING, True)
    try:
        return bool(
            mlflow_auth.sender_is_admin()
            or mlflow_auth._get_permission_from_registered_model_name().can_manage
        )
    finally:
        setattr(g, _CHECKING, False)


def _refusal(action: str, username: str | None) -> Response:
    message = (
        f"permission denied: {action} needs MANAGE on the registered model (the promotion job's "
        f"identity) or an admin; {username} has neither. Promote with jobs/promote.py."
    )
    body = json.dumps({"error_code": "PERMISSION_DENIED", "message": message})
    return Response(body, status=403, mimetype="application/json")


def authenticate_and_guard_promotions() -> Authorization | Response:
    """basic-auth's ``authenticate_request_basic_auth``, then the promotion gate above."""
    authorization = mlflow_auth.authenticate_request_basic_auth()
    if isinstance(authorization, Response) or getattr(g, _CHECKING, False):
        return authorization
    action = _guarded_action()
    if action is None or _may_manage_model():
        return authorization
    return _refusal(action, authorization.username)
