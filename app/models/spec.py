"""The architecture spec that travels with a model's weights as JSON.

A model is fully described by a ``ModelSpec`` (architecture, classes, input shape and the
normalisation it was trained with), so it is rebuilt from code we own plus a safetensors state
dict: loading never unpickles anything.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from app.datasets import DatasetInfo
from app.models.registry import architecture_names

# Inputs at or below this size keep full resolution in the stem (no stride-2 conv / max-pool):
# a 32x32 CIFAR image would otherwise be 8x8 after ResNet's stem.
SMALL_IMAGE_MAX = 64


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

    @property
    def small_image(self) -> bool:
        """Whether the stem keeps full resolution (see ``SMALL_IMAGE_MAX``)."""
        return self.image_size <= SMALL_IMAGE_MAX

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
        """The spec, refused unless its architecture is registered: a model file can only name
        code this package builds."""
        raw: dict[str, Any] = json.loads(text)
        for key in ("mean", "std", "classes"):
            raw[key] = tuple(raw[key])
        spec = cls(**raw)
        if spec.architecture not in architecture_names():
            raise ValueError(
                f"unknown architecture {spec.architecture!r} in model spec; "
                f"choose from {', '.join(architecture_names())}"
            )
        return spec
