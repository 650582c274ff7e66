import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from app.datasets import dataset_info
from app.inference import WEIGHTS_FILE, ModelLoadError, Predictor, save_model_files
from app.models import ModelSpec, build_model, cpu_state_dict


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    spec = ModelSpec.for_dataset("resnet18", dataset_info("digits"))
    model = build_model(spec).eval()
    save_model_files(cpu_state_dict(model), spec, tmp_path)
    return tmp_path, model


def test_round_trip_gives_identical_predictions(saved: tuple[Path, torch.nn.Module]) -> None:
    folder, model = saved
    classifier = Predictor.from_folder(folder)
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    ours = classifier.predict_proba(images)
    x = (torch.from_numpy(images)[:, None].float() / 255 - 0.3053) / 0.3759
    with torch.no_grad():
        reference = torch.softmax(model(x), 1)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_accepts_channels_last_and_rejects_bad_shapes(saved: tuple[Path, torch.nn.Module]) -> None:
    classifier = Predictor.from_folder(saved[0])
    nhwc = np.zeros((2, 8, 8, 1), dtype=np.uint8)
    assert classifier.predict_proba(nhwc).shape == (2, 10)
    with pytest.raises(ValueError, match="expected images of shape"):
        classifier.predict_proba(np.zeros((2, 9, 9), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        classifier.predict_proba(np.zeros((2, 8, 8), dtype=np.float32))


def test_pickle_disguised_as_weights_is_refused_without_running(
    saved: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    folder, _ = saved
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.touch, (marker,))

    (folder / WEIGHTS_FILE).write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ModelLoadError):
        Predictor.from_folder(folder)
    assert not marker.exists()


def test_weights_of_another_architecture_refused(saved: tuple[Path, torch.nn.Module]) -> None:
    folder, _ = saved
    (folder / "spec.json").write_text(
        ModelSpec.for_dataset("mobilenet_v3_small", dataset_info("digits")).to_json()
    )
    with pytest.raises(ModelLoadError, match="do not match"):
        Predictor.from_folder(folder)
