import pytest
import torch
from torch import nn

from app.datasets import dataset_info, dataset_names
from app.models import ModelSpec, architecture_names, build_model, cpu_state_dict, unwrap
from app.models.catalog.mobilenet_v3 import BATCHNORM_MOMENTUM


@pytest.mark.parametrize("architecture", architecture_names())
@pytest.mark.parametrize("dataset", dataset_names())
def test_models_accept_dataset_shapes(architecture: str, dataset: str) -> None:
    spec = ModelSpec.for_dataset(architecture, dataset_info(dataset))
    model = build_model(spec).eval()
    x = torch.randn(2, spec.in_channels, spec.image_size, spec.image_size)
    assert model(x).shape == (2, spec.num_classes)


def test_small_image_stem_keeps_resolution() -> None:
    spec = ModelSpec.for_dataset("resnet18", dataset_info("cifar10"))
    model = build_model(spec)
    assert model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)


@pytest.mark.parametrize("architecture", ["mobilenet_v3_small", "mobilenet_v3_large"])
def test_mobilenet_batchnorm_momentum_fixed(architecture: str) -> None:
    model = build_model(ModelSpec.for_dataset(architecture, dataset_info("digits")))
    momenta = {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert momenta == {BATCHNORM_MOMENTUM}


@pytest.mark.parametrize("architecture", architecture_names())
def test_spec_round_trips_through_json(architecture: str) -> None:
    spec = ModelSpec.for_dataset(architecture, dataset_info("fashion_mnist"))
    assert ModelSpec.from_json(spec.to_json()) == spec


def test_spec_with_unknown_architecture_refused() -> None:
    text = ModelSpec.for_dataset("resnet18", dataset_info("digits")).to_json()
    with pytest.raises(ValueError, match=r"unknown architecture 'os\.system'.*resnet18"):
        ModelSpec.from_json(text.replace("resnet18", "os.system"))


def test_build_model_refuses_an_unknown_architecture() -> None:
    spec = ModelSpec.for_dataset("resnet18", dataset_info("digits"))
    with pytest.raises(ValueError, match="unknown architecture 'vgg'; choose from"):
        build_model(ModelSpec(**{**spec.__dict__, "architecture": "vgg"}))


def test_unwrap_strips_wrappers() -> None:
    inner = nn.Linear(2, 2)
    wrapper = nn.Module()
    wrapper.module = inner
    assert unwrap(wrapper) is inner


def test_cpu_state_dict_is_the_inner_modules_weights() -> None:
    inner = nn.Linear(2, 2)
    wrapper = nn.Module()
    wrapper.module = inner
    state = cpu_state_dict(wrapper)
    assert set(state) == {"weight", "bias"}  # no "module." prefix
    assert torch.equal(state["weight"], inner.weight) and state["weight"].is_contiguous()
