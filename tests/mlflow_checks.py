"""Assertions on what a training run left in MLflow, shared by the integration and e2e tests."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from app.dataset_lineage import digest
from app.datasets import load_splits


def check_training_run(client: MlflowClient, run_id: str, epochs: int, log_every: int) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert params["dataset"] == "digits" and params["epochs"] == str(epochs)
    assert {"lr", "momentum", "weight_decay", "num_workers", "batch_size", "seed"} <= set(params)
    assert tags["dataset"] == "digits" and len(tags["dataset_fingerprint"]) == 64
    assert tags.get("git_commit") is not None and tags.get("ray_job_id")

    batch = client.get_metric_history(run_id, "batch_loss")
    steps = [m.step for m in batch]
    assert steps == list(range(log_every, log_every * len(steps) + 1, log_every))
    val = client.get_metric_history(run_id, "val_accuracy")
    assert len(val) == epochs
    val_steps = [m.step for m in val]
    assert val_steps == sorted(set(val_steps))  # one point per epoch on the same global step
    assert steps[-1] <= val_steps[-1]
    for name in ("train_loss", "train_accuracy", "val_loss", "lr", "images_per_sec"):
        assert len(client.get_metric_history(run_id, name)) == epochs, name
    assert "test_accuracy" in run.data.metrics and "test_macro_f1" in run.data.metrics

    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {
        "evaluation/confusion_matrix.png",
        "evaluation/learning_curve.png",
        "evaluation/hardest_errors.png",
        "evaluation/per_class_metrics.json",
    } <= artifacts


def check_cost_and_lineage(
    client: MlflowClient, run_id: str, workers: int, hourly_usd: float
) -> None:
    """The run's cost, priced at the local rate ``hourly_usd`` (the test cluster's nodes belong
    to no priced group), its dataset input and its system metrics."""
    run = client.get_run(run_id)
    tags, metrics = run.data.tags, run.data.metrics
    held = {k: v for k, v in tags.items() if k.startswith("cost.held.worker")}
    assert len(held) == workers, held
    cpus = float(run.data.params["cpus_per_worker"])
    lifetime_s = (run.info.end_time - run.info.start_time) / 1000
    # Priced from the run's start to just before it was closed.
    assert 0 < metrics["cpu_seconds"] / (workers * cpus) <= lifetime_s
    assert metrics["cpu_seconds"] / (workers * cpus) > lifetime_s - 30
    assert metrics["gpu_seconds"] == 0
    assert 0 < metrics["node_seconds"] <= metrics["cpu_seconds"]
    assert metrics["cost_usd"] == pytest.approx(hourly_usd * metrics["node_seconds"] / 3600)
    assert tags["cost.nodes"] == "local" and tags["cost.price_table"]

    (entry,) = run.inputs.dataset_inputs
    assert entry.dataset.name == tags["dataset"]
    assert entry.dataset.digest == tags["dataset_fingerprint"][: len(entry.dataset.digest)]
    assert entry.dataset.digest == digest(load_splits(tags["dataset"]))
    assert {t.key: t.value for t in entry.tags}["mlflow.data.context"] == "training"
    assert "system/cpu_utilization_percentage" in metrics
    assert "system/system_memory_usage_megabytes" in metrics


def check_model_classifies_digits(model_uri: str, min_accuracy: float) -> float:
    """Load with plain MLflow pyfunc (on CPU) and classify the held-out test digits."""
    splits = load_splits("digits")
    model = mlflow.pyfunc.load_model(model_uri)
    images = splits.x_test[:, 0].numpy()  # (N, 8, 8) uint8
    predictions = model.predict(images)
    accuracy = float(np.mean(predictions["class_index"].to_numpy() == splits.y_test.numpy()))
    assert accuracy >= min_accuracy, accuracy
    return accuracy
