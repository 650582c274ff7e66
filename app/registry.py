"""A registry of named entries filled by the modules of a catalog package.

Datasets (``app/datasets/catalog/``) and model architectures (``app/models/catalog/``) each keep
one. Every module of the catalog registers its entries when imported, and every lookup first
imports the catalog modules not imported yet (``pkgutil``), so a new dataset or architecture is
one new file: the config's choices, ``--help`` and the lookups all follow.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name; names come sorted, whatever order the modules were imported in."""

    def __init__(self, kind: str, catalog: str) -> None:
        self.kind = kind  # "dataset", "architecture": how messages name an entry
        self.catalog = catalog  # the package whose modules register entries
        self._entries: dict[str, T] = {}
        self._local = threading.local()  # whether this thread is importing the catalog now

    def register(self, name: str, entry: T) -> T:
        """Add an entry; a name taken by a different entry is a mistake, not an override."""
        self.discover()  # the catalog's names first, so none is silently taken over
        if not name or not name.isidentifier():
            raise ValueError(f"{self.kind} name {name!r} must be a Python identifier")
        if name in self._entries and self._entries[name] != entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (one registered at runtime, say); unknown names are ignored."""
        self._entries.pop(name, None)

    def discover(self) -> None:
        """Import every public module of the catalog package that is not imported yet.

        A catalog module registering while this imports it does not start a nested pass, so
        every thread imports the modules one at a time in the same (sorted) order, and Python's
        per-module import locks make a second thread wait for the first: no lock of our own."""
        if getattr(self._local, "discovering", False):
            return
        self._local.discovering = True
        try:
            package = importlib.import_module(self.catalog)
            found = pkgutil.iter_modules(package.__path__, f"{package.__name__}.")
            for name in sorted(m.name for m in found):
                if not name.rpartition(".")[2].startswith("_"):
                    importlib.import_module(name)
        finally:
            self._local.discovering = False

    def names(self) -> tuple[str, ...]:
        self.discover()
        return tuple(sorted(self._entries))

    def get(self, name: str) -> T:
        self.discover()
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r}; choose from {', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
