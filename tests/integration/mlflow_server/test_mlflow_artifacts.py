"""Artifacts go through the server into the S3 bucket; clients hold no S3 credentials."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from mlflow import MlflowClient

from .conftest import Stack

pytestmark = pytest.mark.integration


def test_artifacts_land_in_the_bucket_not_on_disk(
    stack: Stack, client: MlflowClient, tmp_path: Path
) -> None:
    experiment_id = client.create_experiment(f"artifacts-{secrets.token_hex(3)}")
    run = client.create_run(experiment_id)
    payload = secrets.token_bytes(4096)
    source = tmp_path / "upload" / "weights.bin"
    source.parent.mkdir()
    source.write_bytes(payload)
    client.log_artifact(run.info.run_id, str(source), artifact_path="model")

    # Proxied: the run points at the server, not at S3 (so no S3 credentials were needed).
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    stored = stack.objects(f"{experiment_id}/{run.info.run_id}/artifacts/model/weights.bin")
    assert list(stored.values()) == [payload]
    # Nothing written locally: neither next to the server nor next to the client.
    assert not [p for p in stack.run_dir.rglob("weights.bin")]
    # (a user's ./mlartifacts from a local `make mlflow-ui` may exist: this run is not in it)
    assert not [p for p in Path("mlartifacts").rglob("*") if run.info.run_id in str(p)]

    downloaded = client.download_artifacts(run.info.run_id, "model", str(tmp_path / "down"))
    assert (Path(downloaded) / "weights.bin").read_bytes() == payload
