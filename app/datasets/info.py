"""The facts every dataset declares, and the arrays its reader returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class DatasetUnavailableError(RuntimeError):
    """The dataset's files are missing and could not be downloaded."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the serving preprocessing need to know about a dataset."""

    name: str
    classes: tuple[str, ...]
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int  # random-crop padding for augmentation; 0 disables it
    flip: bool  # random horizontal flip for augmentation

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class RawArrays(NamedTuple):
    """The official train and test arrays: uint8 (N, C, H, W) images, int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...] | None = None  # class names the files carry, replacing the info's
