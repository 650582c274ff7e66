"""Model lifecycle against a real MLflow tracking server: registry aliases, gated promotion,
loading by every URI form, evaluation with behavioural checks, tampered artifacts refused."""

from __future__ import annotations

import json
import pickle
import runpy
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from app import model_registry, tracking
from app.inference import WEIGHTS_FILE, ModelLoadError
from tests.conftest import REPO, MlflowServer
from tests.model_factory import digits_state, log_digits_model

pytestmark = [pytest.mark.integration]


@dataclass
class Registry:
    name: str
    good_run: str
    good_accuracy: float
    bad_run: str
    client: MlflowClient


@pytest.fixture(scope="module")
def registry(mlflow_server: MlflowServer) -> Iterator[Registry]:
    """One model name with a trained and an untrained version's runs logged (not registered)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
        good_run, good_accuracy = log_digits_model(digits_state(epochs=8), "it-lifecycle")
        bad_run, _ = log_digits_model(digits_state(epochs=0), "it-lifecycle")
        yield Registry(
            f"lifecycle-{uuid.uuid4().hex[:6]}",
            good_run,
            good_accuracy,
            bad_run,
            MlflowClient(mlflow_server.uri),
        )


@pytest.fixture(autouse=True)
def _use_server(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    tracking.configure()


def run_job(name: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys, "argv", [f"jobs/{name}.py", *args])
    try:
        runpy.run_path(str(REPO / "jobs" / f"{name}.py"), run_name="__main__")
    except SystemExit as exit_info:
        return int(exit_info.code or 0)
    return 0


def register(registry: Registry, run_id: str) -> str:
    return model_registry.register_version(run_id, registry.name, {})


def test_gated_promotion_refuses_worse_and_accepts_better(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    good = register(registry, registry.good_run)
    bad = register(registry, registry.bad_run)
    model_registry.set_alias(registry.name, "champion", good)
    model_registry.set_alias(registry.name, "challenger", bad)
    out = tmp_path / "refused.json"
    promote = ["--model-name", registry.name, "--from", "challenger", "--to", "champion"]

    assert run_job("promote", [*promote, "--results-json", str(out)], monkeypatch) == 1
    refused = json.loads(out.read_text())
    assert refused["promoted"] is False
    assert refused["challenger_accuracy"] < refused["champion_accuracy"]
    assert model_registry.alias_version(registry.name, "champion") == good  # nothing changed

    better = register(registry, registry.good_run)  # same weights: "at least as good" passes
    model_registry.set_alias(registry.name, "challenger", better)
    out = tmp_path / "promoted.json"
    assert run_job("promote", [*promote, "--results-json", str(out)], monkeypatch) == 0
    assert json.loads(out.read_text())["promoted"] is True
    assert model_registry.alias_version(registry.name, "champion") == better
    tags = registry.client.get_model_version(registry.name, better).tags
    assert tags["champion.previous_version"] == good
    assert tags["champion.moved_by"] and tags["champion.moved_at"]
    assert float(tags["champion.metric.test_accuracy"]) == pytest.approx(registry.good_accuracy)

    # A higher bar refuses the same challenger.
    bar = ["--min-improvement", "0.01"]
    assert run_job("promote", [*promote, *bar], monkeypatch) == 1

    # Forcing needs a reason, and records it.
    model_registry.set_alias(registry.name, "challenger", bad)
    assert run_job("promote", [*promote, "--force"], monkeypatch) == 1
    assert model_registry.alias_version(registry.name, "champion") == better
    assert run_job("promote", [*promote, "--force", "--reason", "rollback drill"], monkeypatch) == 0
    tags = registry.client.get_model_version(registry.name, bad).tags
    assert tags["champion.forced"] == "true" and tags["champion.forced_reason"] == "rollback drill"
    assert model_registry.alias_version(registry.name, "champion") == bad


def test_every_uri_form_loads_the_same_weights(registry: Registry) -> None:
    version = register(registry, registry.good_run)
    model_registry.set_alias(registry.name, "candidate", version)
    registry.client.transition_model_version_stage(registry.name, version, "Staging")
    uris = [
        f"runs:/{registry.good_run}/model",
        f"models:/{registry.name}@candidate",
        f"models:/{registry.name}/{version}",
    ]
    states = [model_registry.load_predictor(uri).model.state_dict() for uri in uris]
    with pytest.warns(DeprecationWarning, match="stages are deprecated"):
        ref = model_registry.resolve_model_uri(f"models:/{registry.name}/Staging")
    assert ref.version == version and ref.run_id == registry.good_run
    states.append(
        model_registry.load_predictor(f"models:/{registry.name}/Staging").model.state_dict()
    )
    for state in states[1:]:
        assert state.keys() == states[0].keys()
        assert all(torch.equal(state[k], states[0][k]) for k in state)
    assert all(t.device.type == "cpu" for t in states[0].values())


def test_evaluate_job_logs_table_figures_checks_and_lineage(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    version = register(registry, registry.good_run)
    model_registry.set_alias(registry.name, "evaluated", version)
    out = tmp_path / "e.json"
    uri = f"models:/{registry.name}@evaluated"
    args = ["--model-uri", uri, "--dataset", "digits", "--results-json", str(out)]
    assert run_job("evaluate", args, monkeypatch) == 0
    results = json.loads(out.read_text())
    assert results["accuracy"] == pytest.approx(registry.good_accuracy)
    assert 0 < results["macro_f1"] <= 1 and len(results["per_class"]) == 10
    assert results["checks_passed"] is True
    assert {c["name"] for c in results["checks"]} == {
        "shift_agreement",
        "min_class_recall",
        "known_answer_accuracy",
    }
    assert results["lineage"]["training_run_id"] == registry.good_run
    assert len(results["lineage"]["dataset_fingerprint"]) == 64
    run_id = results["evaluation_run_id"]
    run = registry.client.get_run(run_id)
    assert run.data.tags["model_version"] == version
    assert {a.path for a in registry.client.list_artifacts(run_id)} >= {
        "confusion_matrix.png",
        "hardest_errors.png",
        "per_class_metrics.json",
    }
    tags = registry.client.get_model_version(registry.name, version).tags
    assert tags["last_evaluation_run_id"] == run_id


def test_evaluate_job_fails_an_untrained_model_on_its_checks(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "e.json"
    args = ["--model-uri", f"runs:/{registry.bad_run}/model", "--results-json", str(out)]
    assert run_job("evaluate", args, monkeypatch) == 1
    results = json.loads(out.read_text())
    assert results["checks_passed"] is False and results["accuracy"] < 0.5


def test_tampered_artifact_is_refused_without_running_code(
    registry: Registry, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    run_id, _ = log_digits_model(digits_state(epochs=0, seed=1), "it-lifecycle")
    weights = [
        p
        for p in (mlflow_server.root / "artifacts").rglob(WEIGHTS_FILE)
        if run_id in str(p) or _belongs_to(p, run_id)
    ]
    assert weights, "the model's weights should be in the server's artifact store"
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.touch, (marker,))

    for path in weights:
        path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ModelLoadError):
        model_registry.load_predictor(f"runs:/{run_id}/model")
    assert not marker.exists()


def _belongs_to(path: Path, run_id: str) -> bool:
    """MLflow 3 stores logged models under models/<model_id>/; match it through its meta."""
    meta = path.parents[1] / "MLmodel"
    return meta.exists() and run_id in meta.read_text()


def test_plain_pyfunc_predicts_a_batch(registry: Registry) -> None:
    model = mlflow.pyfunc.load_model(f"runs:/{registry.good_run}/model")
    images = torch.zeros(3, 8, 8, dtype=torch.uint8).numpy()
    predictions = model.predict(images)
    assert list(predictions.columns) == ["label", "class_index", "confidence"]
    assert len(predictions) == 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_model_trained_on_gpu_loads_on_cpu(tmp_path: Path) -> None:
    from app.datasets import dataset_info
    from app.inference import Predictor, save_model_files
    from app.models import ModelSpec, build_model

    spec = ModelSpec.for_dataset("resnet18", dataset_info("digits"))
    model = build_model(spec).cuda()
    save_model_files({k: v for k, v in model.state_dict().items()}, spec, tmp_path)
    loaded = Predictor.from_folder(tmp_path, "cpu")
    assert all(p.device.type == "cpu" for p in loaded.model.parameters())
