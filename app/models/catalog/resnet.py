"""ResNets (torchvision), with the stem adapted to small images."""

from __future__ import annotations

import torchvision
from torch import nn

from app.models.registry import architecture
from app.models.spec import ModelSpec


@architecture("resnet18")
def resnet(spec: ModelSpec) -> nn.Module:
    factory = getattr(torchvision.models, spec.architecture)
    model = factory(weights=None, num_classes=spec.num_classes)
    if spec.small_image:
        # 3x3, stride 1, no max-pool: a 32x32 image would otherwise be 8x8 after the stem.
        model.conv1 = nn.Conv2d(spec.in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif spec.in_channels != 3:
        model.conv1 = nn.Conv2d(spec.in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model
