"""Train / val / test splits held in memory, and the fingerprint that says which data a model
saw."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from app.datasets.info import DatasetInfo
from app.datasets.registry import get_dataset


@dataclass
class ImageSplits:
    """Train / val / test splits as uint8 (N, C, H, W) images and int64 labels."""

    info: DatasetInfo
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    fingerprint: str  # sha256 over the raw arrays: which data a model saw, for lineage


def fingerprint(*arrays: np.ndarray) -> str:
    """sha256 over the arrays' bytes, in order."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def stratified_val_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of train and val, each class split in the same proportion, seeded."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_val = round(len(members) * val_fraction)
        val_idx.append(members[:n_val])
        train_idx.append(members[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def load_splits(
    name: str,
    data_dir: Path = Path("data"),
    download: bool = True,
    val_fraction: float = 0.1,
    seed: int = 42,
) -> ImageSplits:
    """Train / val / test splits; val is a seeded, stratified share of the official train."""
    info, (x_train, y_train, x_test, y_test, _) = get_dataset(name).load(Path(data_dir), download)
    train_idx, val_idx = stratified_val_split(y_train, val_fraction, seed)
    return ImageSplits(
        info=info,
        x_train=torch.from_numpy(np.ascontiguousarray(x_train[train_idx])),
        y_train=torch.from_numpy(y_train[train_idx]),
        x_val=torch.from_numpy(np.ascontiguousarray(x_train[val_idx])),
        y_val=torch.from_numpy(y_train[val_idx]),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(y_test),
        fingerprint=fingerprint(x_train, y_train, x_test, y_test),
    )
