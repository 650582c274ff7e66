"""Train / val / test splits held in memory, and the fingerprint that says which data a model
saw."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.datasets import image_folder
from app.datasets.image_folder import IMAGE_FOLDER, ImageFolderSource
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
    skipped: tuple[str, ...] = ()  # image-folder: files not loaded, "path: reason"
    source_uri: str | None = None  # image-folder: file:// or s3:// URI of the folder


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
    folder: ImageFolderSource | None = None,
) -> ImageSplits:
    """Train / val / test splits; val is a seeded, stratified share of the official train.
    ``image-folder`` reads ``folder`` (``app.datasets.image_folder``) instead of a catalog
    dataset."""
    if name == IMAGE_FOLDER or folder is not None:
        if name != IMAGE_FOLDER or folder is None:
            raise ValueError("--image-folder goes with --dataset image-folder, and only with it")
        return _load_image_folder(folder, val_fraction, seed)
    info, (x_train, y_train, x_test, y_test, _) = get_dataset(name).load(Path(data_dir), download)
    return _split(
        info, x_train, y_train, x_test, y_test, val_fraction, seed,
        fingerprint=fingerprint(x_train, y_train, x_test, y_test),
    )  # fmt: skip


def _split(
    info: DatasetInfo,
    x_rest: np.ndarray,
    y_rest: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    val_fraction: float,
    seed: int,
    **facts: Any,
) -> ImageSplits:
    """The splits, val a seeded stratified share of the rest; ``facts``: the fingerprint and
    the other ``ImageSplits`` fields."""
    train_idx, val_idx = stratified_val_split(y_rest, val_fraction, seed)
    return ImageSplits(
        info=info,
        x_train=torch.from_numpy(np.ascontiguousarray(x_rest[train_idx])),
        y_train=torch.from_numpy(y_rest[train_idx]),
        x_val=torch.from_numpy(np.ascontiguousarray(x_rest[val_idx])),
        y_val=torch.from_numpy(y_rest[val_idx]),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(y_test),
        **facts,
    )


def _load_image_folder(source: ImageFolderSource, val_fraction: float, seed: int) -> ImageSplits:
    """The splits of a folder of class subfolders; ImageFolderError when it cannot make one."""
    folder = image_folder.read_folder(source)
    for line in image_folder.describe_skipped(folder.skipped):
        print(line, flush=True)
    image_folder.check_classes(folder, source.uri, source.test_fraction, val_fraction)
    # The test split's seed is fixed: evaluate reloads the same test images whatever --seed.
    rest, test = stratified_val_split(
        folder.labels, source.test_fraction, image_folder.TEST_SPLIT_SEED
    )
    x_rest, y_rest = folder.images[rest], folder.labels[rest]
    train_idx, val_idx = stratified_val_split(y_rest, val_fraction, seed)
    info = image_folder.folder_info(folder.classes, source, x_rest[train_idx])
    print(
        f"image-folder {source.uri}: {len(folder.labels)} images in {len(folder.classes)} "
        f"classes ({len(train_idx)} train, {len(val_idx)} val, {len(test)} test)",
        flush=True,
    )
    return _split(
        info, x_rest, y_rest, folder.images[test], folder.labels[test], val_fraction, seed,
        fingerprint=image_folder.folder_fingerprint(folder, source),
        skipped=tuple(folder.skipped),
        source_uri=source.canonical_uri,
    )  # fmt: skip
