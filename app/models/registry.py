"""The architecture registry: every module of ``app/models/catalog/`` registers the builders of
one architecture family, so adding an architecture is one entry there (or one new module)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from torch import nn

from app.registry import Registry

if TYPE_CHECKING:
    from app.models.spec import ModelSpec

Builder = Callable[["ModelSpec"], nn.Module]
B = TypeVar("B", bound=Builder)

_ARCHITECTURES: Registry[Builder] = Registry("architecture", "app.models.catalog")


def register_architecture(name: str, builder: Builder) -> Builder:
    """Make ``build_model`` build ``name`` with ``builder`` (a freshly initialised network, no
    weight download); the config's ``--model`` choices follow."""
    return _ARCHITECTURES.register(name, builder)


def architecture(*names: str) -> Callable[[B], B]:
    """Decorator: register one builder under each of ``names`` (a family shares a builder)."""

    def decorate(builder: B) -> B:
        for name in names:
            register_architecture(name, builder)
        return builder

    return decorate


def unregister_architecture(name: str) -> None:
    _ARCHITECTURES.unregister(name)


def architecture_names() -> tuple[str, ...]:
    return _ARCHITECTURES.names()


def build_model(spec: ModelSpec) -> nn.Module:
    """A freshly initialised model for the spec (no weight download)."""
    return _ARCHITECTURES.get(spec.architecture)(spec)
