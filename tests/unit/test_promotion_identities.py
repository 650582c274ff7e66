"""The users files give MANAGE on registered models (moving @champion past the gate, which
cluster/mlflow/alias_guard.py enforces) to the promotion identity alone; people get less."""

from __future__ import annotations

from pathlib import Path

import yaml

from cluster.mlflow.users import UsersFile

REPO = Path(__file__).resolve().parents[2]


def test_the_local_example_lets_only_the_promoter_manage_models() -> None:
    spec = UsersFile.model_validate(
        yaml.safe_load((REPO / "cluster/mlflow/users.example.yaml").read_text())
    )
    managers = [u.username for u in spec.users if "MANAGE" in u.registered_models.values()]
    assert managers == ["promoter"]
    assert not any(u.admin for u in spec.users)


def test_the_clusters_users_let_only_ray_promote_manage_models() -> None:
    lines = (REPO / "cluster/scripts/setup/users.conf").read_text().splitlines()
    users = [line.split() for line in lines if line.strip() and not line.startswith("#")]
    models_role = {words[0]: words[-1] for words in users}
    assert [u for u, role in models_role.items() if role == "MANAGE"] == ["ray-promote"]
    assert models_role["ray-serve"] == "READ" and models_role["ray-jobs"] == "EDIT"
    people = {u for u in models_role if not u.startswith("ray-")}
    assert {models_role[u] for u in people} <= {"READ", "admin"}
