import pytest
import torch
from torch import nn

from app.data import DATASETS
from app.models import ARCHITECTURES, BATCHNORM_MOMENTUM, ModelSpec, build_model, unwrap


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("dataset", ["digits", "fashion_mnist", "cifar10"])
def test_models_accept_dataset_shapes(architecture: str, dataset: str) -> None:
    spec = ModelSpec.for_dataset(architecture, DATASETS[dataset])
    model = build_model(spec).eval()
    x = torch.randn(2, spec.in_channels, spec.image_size, spec.image_size)
    assert model(x).shape == (2, spec.num_classes)


def test_small_image_stem_keeps_resolution() -> None:
    spec = ModelSpec.for_dataset("resnet18", DATASETS["cifar10"])
    model = build_model(spec)
    assert model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)


@pytest.mark.parametrize("architecture", ["mobilenet_v3_small", "mobilenet_v3_large"])
def test_mobilenet_batchnorm_momentum_fixed(architecture: str) -> None:
    model = build_model(ModelSpec.for_dataset(architecture, DATASETS["digits"]))
    momenta = {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert momenta == {BATCHNORM_MOMENTUM}


def test_spec_round_trips_through_json() -> None:
    spec = ModelSpec.for_dataset("resnet18", DATASETS["fashion_mnist"])
    assert ModelSpec.from_json(spec.to_json()) == spec


def test_spec_with_unknown_architecture_refused() -> None:
    text = ModelSpec.for_dataset("resnet18", DATASETS["digits"]).to_json()
    with pytest.raises(ValueError, match="unknown architecture"):
        ModelSpec.from_json(text.replace("resnet18", "os.system"))


def test_unwrap_strips_wrappers() -> None:
    inner = nn.Linear(2, 2)
    wrapper = nn.Module()
    wrapper.module = inner
    assert unwrap(wrapper) is inner
