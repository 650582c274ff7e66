"""Model factory: torchvision architectures with stems adapted to small images.

A model is fully described by a ``ModelSpec`` (architecture, classes, input shape and the
normalisation it was trained with). The spec travels with the weights as JSON, so a model is
rebuilt from code we own plus a safetensors state dict: loading never unpickles anything.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torchvision
from torch import nn

from app.data import DatasetInfo

ARCHITECTURES = ("resnet18", "mobilenet_v3_small", "mobilenet_v3_large")
# Inputs at or below this size keep full resolution in the stem (no stride-2 conv / max-pool):
# a 32x32 CIFAR image would otherwise be 8x8 after ResNet's stem.
SMALL_IMAGE_MAX = 64
# At or below this size MobileNetV3 also keeps the first inverted-residual stage at full
# resolution: an 8x8 digit would otherwise be 1x1 after three blocks.
TINY_IMAGE_MAX = 16
# torchvision's MobileNetV3 uses BatchNorm momentum 0.01: after a short training the running
# statistics are still near their initial values and eval-mode accuracy collapses to chance.
# 0.1 (PyTorch's default) tracks the batch statistics within a few hundred steps.
BATCHNORM_MOMENTUM = 0.1


@dataclass(frozen=True)
class ModelSpec:
    architecture: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    dataset: str

    @classmethod
    def for_dataset(cls, architecture: str, info: DatasetInfo) -> ModelSpec:
        return cls(
            architecture=architecture,
            num_classes=info.num_classes,
            in_channels=info.channels,
            image_size=info.image_size,
            mean=info.mean,
            std=info.std,
            classes=info.classes,
            dataset=info.name,
        )

    def dataset_info(self) -> DatasetInfo:
        """The preprocessing view of the spec (no augmentation: that is for training only)."""
        return DatasetInfo(
            self.dataset,
            self.classes,
            self.in_channels,
            self.image_size,
            self.mean,
            self.std,
            0,
            False,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        raw: dict[str, Any] = json.loads(text)
        for key in ("mean", "std", "classes"):
            raw[key] = tuple(raw[key])
        spec = cls(**raw)
        if spec.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {spec.architecture!r} in model spec")
        return spec


def _resnet18(spec: ModelSpec) -> nn.Module:
    model = torchvision.models.resnet18(weights=None, num_classes=spec.num_classes)
    if spec.image_size <= SMALL_IMAGE_MAX:
        model.conv1 = nn.Conv2d(spec.in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif spec.in_channels != 3:
        model.conv1 = nn.Conv2d(spec.in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model


def _mobilenet_v3(spec: ModelSpec) -> nn.Module:
    factory = getattr(torchvision.models, spec.architecture)
    model = factory(weights=None, num_classes=spec.num_classes)
    stem = model.features[0][0]
    stride = 1 if spec.image_size <= SMALL_IMAGE_MAX else 2
    model.features[0][0] = nn.Conv2d(
        spec.in_channels, stem.out_channels, 3, stride=stride, padding=1, bias=False
    )
    if spec.image_size <= TINY_IMAGE_MAX:
        first_strided = next(
            m for m in model.features.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)
        )
        first_strided.stride = (1, 1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = BATCHNORM_MOMENTUM
    return model


def build_model(spec: ModelSpec) -> nn.Module:
    """A freshly initialised model for the spec (no weight download)."""
    if spec.architecture == "resnet18":
        return _resnet18(spec)
    if spec.architecture in ("mobilenet_v3_small", "mobilenet_v3_large"):
        return _mobilenet_v3(spec)
    raise ValueError(f"unknown architecture {spec.architecture!r}; choose from {ARCHITECTURES}")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A contiguous CPU copy of the weights, as safetensors and checkpoints want them."""
    return {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}
