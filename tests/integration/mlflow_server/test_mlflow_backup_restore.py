"""cluster/scripts/backup-mlflow.sh and restore-mlflow.sh, for real: back up, drop the database
and empty the bucket, restore, and find everything again."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, ViewType
from psycopg2 import sql
from sqlalchemy.engine import make_url

from cluster.mlflow.launcher import start_server, stop_server
from cluster.mlflow.settings import split_s3_uri

from .conftest import Stack, drop_database

pytestmark = pytest.mark.integration

TABLES = ("experiments", "runs", "params", "metrics", "registered_model_aliases", "users")


def _row_counts(stack: Stack) -> dict[str, int]:
    counts = {}
    with stack.database() as cur:
        for table in TABLES:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            counts[table] = cur.fetchone()[0]
    return counts


def _snapshot(client: MlflowClient, run_id: str, model: str) -> dict[str, object]:
    run = client.get_run(run_id)
    return {
        "experiments": sorted(e.name for e in client.search_experiments(ViewType.ALL)),
        "params": run.data.params,
        "status": run.info.status,
        "history": [(m.step, m.value) for m in client.get_metric_history(run_id, "acc")],
        "champion": client.get_model_version_by_alias(model, "champion").run_id,
    }


def _empty_bucket(stack: Stack) -> None:
    bucket, prefix = split_s3_uri(stack.state.artifacts_destination)
    s3 = stack.state.s3.client()
    for key in stack.objects():
        s3.delete_object(Bucket=bucket, Key=key)
    assert not s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount")


def test_backup_drop_restore_keeps_everything(
    stack: Stack, client: MlflowClient, tmp_path: Path
) -> None:
    suffix = secrets.token_hex(3)
    run_id = client.create_run(client.create_experiment(f"backup-{suffix}")).info.run_id
    client.log_param(run_id, "lr", "0.05")
    client.log_batch(run_id, metrics=[Metric("acc", s / 50, 1_000 + s, s) for s in range(50)])
    report = tmp_path / "report.txt"
    report.write_text(f"report {suffix}")
    client.log_artifact(run_id, str(report))
    client.set_terminated(run_id)
    model = f"backup-model-{suffix}"
    client.create_registered_model(model)
    client.create_model_version(model, f"runs:/{run_id}/report.txt", run_id=run_id)
    client.set_registered_model_alias(model, "champion", "1")
    before = _snapshot(client, run_id, model)
    counts = _row_counts(stack)

    backup = tmp_path / "backup"
    done = stack.run_script(["cluster/scripts/backup-mlflow.sh", str(backup)])
    assert done.returncode == 0, done.stderr
    assert (backup / "mlflow.dump").stat().st_size > 0
    # Password hashes and artifacts: nothing of the backup is readable by other users.
    for path in [backup, *backup.rglob("*")]:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is not private"

    assert stop_server(stack.run_dir)
    database = make_url(stack.state.backend_store_uri).database
    assert database
    drop_database(database)
    _empty_bucket(stack)

    done = stack.run_script(["cluster/scripts/restore-mlflow.sh", str(backup)])
    assert done.returncode == 0, done.stderr
    start_server(stack.settings, stack.run_dir)

    assert _row_counts(stack) == counts
    assert _snapshot(client, run_id, model) == before
    restored = client.download_artifacts(run_id, "report.txt", str(tmp_path / "restored"))
    assert Path(restored).read_text() == f"report {suffix}"

    # A second restore would overwrite live data: refused.
    done = stack.run_script(["cluster/scripts/restore-mlflow.sh", str(backup)])
    assert done.returncode != 0
    assert "is not empty" in done.stderr
