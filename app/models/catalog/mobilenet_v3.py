"""MobileNetV3 small and large (torchvision), with the stem adapted to small images and
BatchNorm statistics that track the data within a short training."""

from __future__ import annotations

import torchvision
from torch import nn

from app.models.registry import architecture
from app.models.spec import ModelSpec

# At or below this size the first inverted-residual stage also keeps full resolution: an 8x8
# digit would otherwise be 1x1 after three blocks.
TINY_IMAGE_MAX = 16
# torchvision's MobileNetV3 uses BatchNorm momentum 0.01: after a short training the running
# statistics are still near their initial values and eval-mode accuracy collapses to chance.
# 0.1 (PyTorch's default) tracks the batch statistics within a few hundred steps.
BATCHNORM_MOMENTUM = 0.1


@architecture("mobilenet_v3_small", "mobilenet_v3_large")
def mobilenet_v3(spec: ModelSpec) -> nn.Module:
    factory = getattr(torchvision.models, spec.architecture)
    model = factory(weights=None, num_classes=spec.num_classes)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(
        spec.in_channels,
        stem.out_channels,
        3,
        stride=1 if spec.small_image else 2,
        padding=1,
        bias=False,
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
