"""The dataset registry: every module of ``app/datasets/catalog/`` declares one ``Dataset``
and registers it; lookups find them all, so adding a dataset is one new module there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from app.datasets.fetch import Download, ensure
from app.datasets.info import DatasetInfo, RawArrays
from app.registry import Registry


@dataclass(frozen=True)
class Dataset:
    """A dataset's facts, where its files come from and how they are read."""

    info: DatasetInfo
    # Reads the folder ``source`` ensured (``--data-dir`` itself when there is no source).
    read: Callable[[Path], RawArrays]
    source: Download | None = None  # None: ships with a Python package, always offline
    summary: str = ""  # one line for people: what the images are, where they come from

    @property
    def name(self) -> str:
        return self.info.name

    def load(self, data_dir: Path, download: bool = True) -> tuple[DatasetInfo, RawArrays]:
        """The official train and test arrays, reading (or downloading) the files."""
        folder = ensure(self.name, self.source, data_dir, download) if self.source else data_dir
        raw = self.read(folder)
        info = self.info if raw.classes is None else replace(self.info, classes=raw.classes)
        expected = (info.channels, info.image_size, info.image_size)
        for images in (raw.x_train, raw.x_test):
            if images.shape[1:] != expected:
                raise ValueError(f"{self.name}: unexpected image shape {images.shape[1:]}")
        return info, raw


_DATASETS: Registry[Dataset] = Registry("dataset", "app.datasets.catalog")


def register_dataset(dataset: Dataset) -> Dataset:
    """Make a dataset available by name (to ``load_splits``, the config, ``--help``)."""
    return _DATASETS.register(dataset.name, dataset)


def unregister_dataset(name: str) -> None:
    _DATASETS.unregister(name)


def get_dataset(name: str) -> Dataset:
    """The registered dataset; ValueError naming the choices for an unknown name."""
    return _DATASETS.get(name)


def dataset_info(name: str) -> DatasetInfo:
    """The declared facts of a dataset, without reading its files (CIFAR-100's class names are
    placeholders until its meta file is read)."""
    return get_dataset(name).info


def dataset_names() -> tuple[str, ...]:
    return _DATASETS.names()
