"""jobs/train.py --dataset image-folder on the session Ray cluster and MLflow server: the digits
written as PNG/JPEG files in folders zero..nine (plus a corrupt and a non-image file), trained,
registered, and a model loaded from the registry that labels with the folder names."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from app.datasets.digits_files import DIGIT_NAMES, write_digits_images
from app.model_registry import load_predictor
from app.preprocessing import to_model_input
from tests.conftest import REPO, MlflowServer, RayCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_training_on_an_image_folder_labels_with_folder_names(
    ray_client_env: RayCluster,
    mlflow_server: MlflowServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    root = tmp_path / "my-digits"
    paths = write_digits_images(root, size=16)
    good = paths[0].read_bytes()
    (root / "zero" / "broken.png").write_bytes(good[: len(good) // 2])
    (root / "one" / "notes.jpg").write_text("not a picture\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    results_path = tmp_path / "out.json"
    args = ["--dataset", "image-folder", "--image-folder", str(root), "--image-size", "16"]
    args += ["--channels", "1", "--epochs", "3", "--num-workers", "1"]
    args += ["--experiment", "it-image-folder", "--register-as", "it-own-images"]
    args += ["--storage-path", str(tmp_path / "ray_results"), "--results-json", str(results_path)]
    monkeypatch.setattr(sys, "argv", ["jobs/train.py", *args])
    runpy.run_path(str(REPO / "jobs" / "train.py"), run_name="__main__")

    results = json.loads(results_path.read_text())
    assert results["test_accuracy"] >= 0.8
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(results["run_id"])
    assert run.data.metrics["dataset_skipped_files"] == 2
    skipped = Path(client.download_artifacts(results["run_id"], "skipped_files.txt", str(tmp_path)))
    assert [line.split(":")[0] for line in skipped.read_text().splitlines()] == [
        "one/notes.jpg",
        "zero/broken.png",
    ]
    source = json.loads(run.inputs.dataset_inputs[0].dataset.source)
    assert source["uri"] == root.resolve().as_uri()
    assert run.inputs.dataset_inputs[0].dataset.source_type == "local"

    mlflow.set_tracking_uri(mlflow_server.uri)
    predictor = load_predictor("models:/it-own-images/1")
    assert predictor.spec.classes == tuple(sorted(DIGIT_NAMES))
    assert predictor.spec.dataset == "image-folder"
    samples = paths[::37]
    images = [to_model_input(p.read_bytes(), 16, 1) for p in samples]
    import numpy as np

    labels = predictor.predict_proba(np.stack(images)).argmax(1).tolist()
    named = [predictor.spec.classes[i] for i in labels]
    correct = sum(name == p.parent.name for name, p in zip(named, samples, strict=True))
    assert correct >= 0.8 * len(samples), [p.parent.name for p in samples]
