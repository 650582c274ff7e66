"""Models: the spec that travels with the weights, and a registry of architecture families
(``catalog/``: resnet, mobilenet_v3) whose stems are adapted to small images."""

from app.models.registry import (
    architecture,
    architecture_names,
    build_model,
    register_architecture,
    unregister_architecture,
)
from app.models.spec import SMALL_IMAGE_MAX, ModelSpec
from app.models.weights import cpu_state_dict, unwrap

__all__ = [
    "SMALL_IMAGE_MAX",
    "ModelSpec",
    "architecture",
    "architecture_names",
    "build_model",
    "cpu_state_dict",
    "register_architecture",
    "unregister_architecture",
    "unwrap",
]
