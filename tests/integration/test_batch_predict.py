"""jobs/predict.py's entry point, in this process, on the session Ray cluster and MLflow server:
a registered digits model scores the digits written as PNG/JPEG files (with a corrupt file and
a non-image among them), from a local folder and from an S3 prefix (moto), to Parquet."""

from __future__ import annotations

import json
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
from mlflow.tracking import MlflowClient

from app.datasets.digits_files import DIGIT_NAMES, write_digits_images
from tests.conftest import REPO, MlflowServer, RayCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL_NAME = "it-batch-digits"
PER_CLASS = 8


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """100-odd digits as files, plus a truncated JPEG and a text file named .png (both given:
    rows with errors), and a README.txt (not an image file: not given)."""
    root = tmp_path_factory.mktemp("digits-images")
    written = write_digits_images(root, size=32, limit_per_class=PER_CLASS)
    corrupt = root / "zero" / "truncated.jpg"
    corrupt.write_bytes(written[1].read_bytes()[:80])
    fake = root / "one" / "not-an-image.png"
    fake.write_text("hello, I am text")
    (root / "README.txt").write_text("not an image file")
    return root, sorted([*written, corrupt, fake])


@pytest.fixture(scope="module")
def model(mlflow_server: MlflowServer) -> Iterator[dict[str, str]]:
    """A trained digits model registered @champion on the session MLflow server."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
        from app import model_registry
        from tests.model_factory import digits_state, log_digits_model

        run_id, _ = log_digits_model(digits_state(epochs=4), "it-batch-predict-models")
        version = model_registry.register_version(run_id, MODEL_NAME, {}, "champion")
        yield {"uri": f"models:/{MODEL_NAME}@champion", "run_id": run_id, "version": version}


def bare_labels(model_uri: str, paths: list[Path]) -> dict[str, str]:
    """The same model over the same files in one loop, no Ray: path -> label."""
    from app.model_registry import load_predictor
    from app.preprocessing import InputError, to_model_input

    predictor = load_predictor(model_uri)
    spec = predictor.spec
    labels = {}
    for path in paths:
        try:
            image = to_model_input(path.read_bytes(), spec.image_size, spec.in_channels)
        except InputError:
            continue
        index = int(predictor.predict_proba(image[None]).argmax(1)[0])
        labels[str(path)] = spec.classes[index]
    return labels


def run_predict(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["jobs/predict.py", *args])
    runpy.run_path(str(REPO / "jobs" / "predict.py"), run_name="__main__")


def read_rows(location: str, filesystem: pafs.FileSystem) -> list[dict[str, Any]]:
    table = pads.dataset(location, filesystem=filesystem, format="parquet").to_table()
    return sorted(table.to_pylist(), key=lambda row: row["path"])


def check_run(client: MlflowClient, results: dict[str, Any], model: dict[str, str]) -> None:
    run = client.get_run(results["run_id"])
    assert run.info.status == "FINISHED"
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    assert metrics["images_scored"] == 10 * PER_CLASS
    assert metrics["images_unreadable"] == 2
    assert metrics["images_per_sec"] > 0 and metrics["wall_seconds"] > 0
    assert params["model_uri"] == model["uri"] and params["model_version"] == model["version"]
    assert params["input"] == results["input"] and params["output"] == results["output"]
    assert tags["model_name"] == MODEL_NAME and tags["model_version"] == model["version"]
    assert tags["source_run_id"] == model["run_id"]
    unreadable = client.download_artifacts(results["run_id"], "unreadable.txt")
    listed = Path(unreadable).read_text().splitlines()
    assert len(listed) == 2
    assert {line.split("\t")[0].rsplit("/", 1)[1] for line in listed} == {
        "truncated.jpg",
        "not-an-image.png",
    }


def check_rows(rows: list[dict[str, Any]], given: list[str], bare: dict[str, str]) -> None:
    """One row per image file given; the bad ones with an error; the others as the bare loop
    labels them, and mostly right (the folder names the digit)."""
    assert [row["path"] for row in rows] == sorted(given)
    failed = {row["path"].rsplit("/", 1)[1]: row for row in rows if row["error"]}
    assert set(failed) == {"truncated.jpg", "not-an-image.png"}
    assert failed["not-an-image.png"]["error"].startswith("unsupported_format")
    assert all(row["label"] is None and row["top_k"] is None for row in failed.values())
    scored = [row for row in rows if not row["error"]]
    assert len(scored) == 10 * PER_CLASS
    assert {row["model_name"] for row in rows} == {MODEL_NAME}
    assert all(
        len(row["top_k"]) == 3 and row["top_k"][0]["label"] == row["label"] for row in scored
    )
    assert [bare[row["path"]] for row in scored] == [row["label"] for row in scored]
    right = sum(DIGIT_NAMES[int(row["label"])] == row["path"].split("/")[-2] for row in scored)
    assert right / len(scored) >= 0.7, right


def test_a_folder_of_digits_is_scored_to_parquet(
    ray_client_env: RayCluster,
    mlflow_server: MlflowServer,
    images: tuple[Path, list[Path]],
    model: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    root, given = images
    output, results_path = tmp_path / "predictions", tmp_path / "results.json"
    args = ["--model-uri", model["uri"], "--input", str(root), "--output", str(output)]
    run_predict(
        [*args, "--experiment", "it-batch-inference", "--results-json", str(results_path)],
        monkeypatch,
    )
    results = json.loads(results_path.read_text())
    assert (results["images"], results["images_scored"], results["images_unreadable"]) == (
        len(given),
        10 * PER_CLASS,
        2,
    )
    assert results["model_version"] == model["version"]
    rows = read_rows(str(output), pafs.LocalFileSystem())
    check_rows(rows, [str(p) for p in given], bare_labels(model["uri"], given))
    check_run(MlflowClient(mlflow_server.uri), results, model)

    # The same output again: refused, the earlier result left as it was.
    before = sorted(p.name for p in output.iterdir())
    with pytest.raises(SystemExit) as refused:
        run_predict(args, monkeypatch)
    assert refused.value.code == 1
    assert sorted(p.name for p in output.iterdir()) == before


def test_an_s3_prefix_is_scored_to_s3(
    ray_client_env: RayCluster,
    mlflow_server: MlflowServer,
    images: tuple[Path, list[Path]],
    model: dict[str, str],
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import boto3

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    root, given = images
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="scans")
    for path in [*given, root / "README.txt"]:
        s3.upload_file(str(path), "scans", f"inbox/{path.relative_to(root).as_posix()}")
    results_path = tmp_path / "results.json"
    run_predict(
        [
            "--model-uri",
            model["uri"],
            "--input",
            "s3://scans/inbox/",
            "--output",
            "s3://scans/predictions/night-1",
            "--experiment",
            "it-batch-inference",
            "--results-json",
            str(results_path),
        ],
        monkeypatch,
    )
    results = json.loads(results_path.read_text())
    uris = [f"s3://scans/inbox/{p.relative_to(root).as_posix()}" for p in given]
    bare = {
        f"s3://scans/inbox/{Path(path).relative_to(root).as_posix()}": label
        for path, label in bare_labels(model["uri"], given).items()
    }
    filesystem = pafs.S3FileSystem(
        endpoint_override=s3_endpoint.removeprefix("http://"), scheme="http", region="us-east-1"
    )
    check_rows(read_rows("scans/predictions/night-1", filesystem), uris, bare)
    check_run(MlflowClient(mlflow_server.uri), results, model)
