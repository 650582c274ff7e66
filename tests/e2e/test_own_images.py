"""A team's own images, the way a user runs them: the digits written as PNG/JPEG files (with a
corrupt file and a non-image among them) train through `ray job submit` on an image folder,
register, serve over HTTP with the folder's class names, and score in bulk with
jobs/predict.py as a Ray Job. (The s3:// forms: tests/unit/test_image_folder.py and
tests/integration/test_batch_predict.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests
from mlflow.tracking import MlflowClient

from serve.client import ServeClient
from tests.conftest import REPO, MlflowServer, RayCluster
from tests.e2e.test_serve import Service, serve_cli, service_config
from tests.support import free_port, http_ok, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SIZE = 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's command writes the digits as files; a corrupt PNG and a text file named
    .jpg join them."""
    root = tmp_path_factory.mktemp("own-images")
    subprocess.run(
        [sys.executable, "-m", "app.datasets.digits_files", str(root), "--size", str(SIZE)],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    good = next((root / "seven").iterdir())
    (root / "seven" / "broken.png").write_bytes(good.read_bytes()[:60])
    (root / "three" / "notes.jpg").write_text("not an image")
    return root


def image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def trained(ray_cluster: RayCluster, mlflow_server: MlflowServer, folder: Path) -> Iterator[str]:
    name = f"own-{uuid.uuid4().hex[:6]}"
    job_id = f"own-train-{uuid.uuid4().hex[:8]}"
    ray_cluster.submit(
        [
            "python", "jobs/train.py", "--dataset", "image-folder", "--image-folder", str(folder),
            "--image-size", str(SIZE), "--channels", "1", "--epochs", "4", "--num-workers", "1",
            "--experiment", "e2e-own-images", "--register-as", name, "--alias", "champion",
        ],
        job_id,
    )  # fmt: skip
    info = ray_cluster.jobs.wait(job_id, timeout=900)
    assert info["status"] == "SUCCEEDED", ray_cluster.jobs.logs(job_id)[-4000:]
    yield name


def test_own_images_train_serve_and_score_in_bulk(
    ray_cluster: RayCluster,
    mlflow_server: MlflowServer,
    folder: Path,
    trained: str,
    tmp_path: Path,
) -> None:
    client = MlflowClient(mlflow_server.uri)
    version = client.get_model_version_by_alias(trained, "champion")
    run = client.get_run(version.run_id)
    assert run.data.metrics["dataset_skipped_files"] == 2
    assert run.data.metrics["test_accuracy"] >= 0.8

    port = free_port()
    service = Service(
        f"http://127.0.0.1:{port}", service_config(port), tmp_path / "serve.yaml",
        ray_cluster.env, ray_cluster.dashboard,
    )  # fmt: skip
    classifier = next(
        d for d in service.config["applications"][0]["deployments"] if d["name"] == "Classifier"
    )
    classifier["user_config"]["model_name"] = trained
    try:
        service.deploy()
        wait_for(lambda: http_ok(f"{service.url}/health"), 300, "the service's /health")
        info = requests.get(f"{service.url}/model", timeout=10).json()
        assert sorted(info["classes"]) == sorted(p.name for p in folder.iterdir() if p.is_dir())
        assert info["lineage"]["training_run_id"] == version.run_id
        sevens = [p for p in sorted((folder / "seven").iterdir()) if p.name != "broken.png"]
        answers = [ServeClient(service.url).predict(p.read_bytes()) for p in sevens[:8]]
        assert sum(a["label"] == "seven" for a in answers) >= 6, answers
        response = requests.post(f"{service.url}/predict", data=b"not an image", timeout=30)
        assert response.status_code in (400, 415) and "label" not in response.json()
    finally:
        serve_cli(["shutdown", "-y", "--address", ray_cluster.dashboard], ray_cluster.env)

    out = tmp_path / "scores"
    job_id = f"own-predict-{uuid.uuid4().hex[:8]}"
    ray_cluster.submit(
        [
            "python", "jobs/predict.py", "--model-uri", f"models:/{trained}@champion",
            "--input", str(folder), "--output", str(out),
            "--results-json", str(tmp_path / "predict.json"),
        ],
        job_id,
    )  # fmt: skip
    info = ray_cluster.jobs.wait(job_id, timeout=600)
    assert info["status"] == "SUCCEEDED", ray_cluster.jobs.logs(job_id)[-4000:]
    rows = pq.read_table(out).to_pylist()
    files = image_files(folder)
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in files)
    failed = {Path(r["path"]).name for r in rows if r["error"]}
    assert failed == {"broken.png", "notes.jpg"}
    scored = [r for r in rows if not r["error"]]
    right = sum(r["label"] == Path(r["path"]).parent.name for r in scored)
    assert right / len(scored) >= 0.8
    assert {r["model_version"] for r in scored} == {version.version}
    results = json.loads((tmp_path / "predict.json").read_text())
    assert results["images_scored"] == len(scored)
