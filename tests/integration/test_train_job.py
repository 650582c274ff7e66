"""jobs/train.py's entry point, in this process, on the session Ray cluster: a real 2-worker
TorchTrainer on digits, logging to a real MLflow server."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import LOCAL_NODE_HOURLY_USD, REPO, MlflowServer, RayCluster
from tests.mlflow_checks import (
    check_cost_and_lineage,
    check_model_classifies_digits,
    check_training_run,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def run_train_entry(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["jobs/train.py", *args])
    runpy.run_path(str(REPO / "jobs" / "train.py"), run_name="__main__")


def test_two_worker_training_logs_registers_and_serves_a_model(
    ray_client_env: RayCluster,
    mlflow_server: MlflowServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    results_path = tmp_path / "out.json"
    epochs, log_every = 4, 5
    run_train_entry(
        [
            "--dataset",
            "digits",
            "--model",
            "resnet18",
            "--epochs",
            str(epochs),
            "--num-workers",
            "2",
            "--log-every-n-batches",
            str(log_every),
            "--experiment",
            "it-train",
            "--register-as",
            "it-digits",
            "--alias",
            "challenger",
            "--storage-path",
            str(tmp_path / "ray_results"),
            "--results-json",
            str(results_path),
        ],
        monkeypatch,
    )
    results = json.loads(results_path.read_text())
    assert results["epochs"] == epochs and results["wall_seconds"] > 0
    assert results["model_uri"] == f"runs:/{results['run_id']}/model"
    assert results["registered_version"] == "1"
    assert results["test_accuracy"] >= 0.9
    assert len(results["per_class"]) == 10

    client = MlflowClient(mlflow_server.uri)
    check_training_run(client, results["run_id"], epochs, log_every)
    check_cost_and_lineage(client, results["run_id"], 2, LOCAL_NODE_HOURLY_USD)
    assert results["cost"]["cost_usd"] == client.get_run(results["run_id"]).data.metrics["cost_usd"]
    # Artifacts went through the server into its artifact store, not the client's disk.
    stored = list((mlflow_server.root / "artifacts").rglob("confusion_matrix.png"))
    assert stored
    version = client.get_model_version_by_alias("it-digits", "challenger")
    assert version.version == "1" and version.run_id == results["run_id"]
    mlflow.set_tracking_uri(mlflow_server.uri)
    accuracy = check_model_classifies_digits("models:/it-digits@challenger", 0.9)
    assert accuracy == pytest.approx(results["test_accuracy"])

    # One command: what the model cost and what it was made from.
    chain = provenance("models:/it-digits@challenger", "--json")
    run = client.get_run(results["run_id"])
    assert (chain["version"], chain["aliases"]) == ("1", ["challenger"])
    assert chain["training_run_id"] == results["run_id"]
    assert chain["run"]["cost_usd"] == run.data.metrics["cost_usd"]
    assert chain["dataset_digest"] == run.inputs.dataset_inputs[0].dataset.digest
    assert chain["git_commit"] == run.data.tags["git_commit"]
    assert chain["sweep_totals"] is None  # trained on its own, not in a sweep
    text = provenance("models:/it-digits/1")
    assert f"${run.data.metrics['cost_usd']:.4f}" in text and chain["dataset_digest"] in text
    missing = subprocess.run(
        [sys.executable, "-m", "app.provenance", "models:/it-digits/99"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert missing.returncode == 1 and "it-digits/99" in missing.stderr
    assert "Traceback" not in missing.stderr


def provenance(*args: str) -> Any:
    out = subprocess.run(
        [sys.executable, "-m", "app.provenance", *args],
        capture_output=True, text=True, cwd=REPO, check=True,
    ).stdout  # fmt: skip
    return json.loads(out) if "--json" in args else out


def test_missing_dataset_fails_with_instructions_before_training(
    ray_client_env: RayCluster,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_train_entry(
            ["--dataset", "cifar10", "--no-download", "--data-dir", str(tmp_path)], monkeypatch
        )
    assert exit_info.value.code == 1
    assert "cifar-10-python.tar.gz" in capsys.readouterr().err
