"""Datasets: a registry of one module per dataset, their published-format readers, the splits
and the batch transforms used in training and serving.

Every dataset is held in memory as uint8 tensors shaped (N, C, H, W): CIFAR-10/100 and
Fashion-MNIST are small enough, and it lets augmentation and normalisation run per batch on
whatever device trains.

- ``catalog/``: one module per dataset (digits, cifar10, cifar100, fashion_mnist), each
  registering a ``Dataset``: its ``DatasetInfo``, its ``Download`` and its reader.
- ``formats``: readers of the published formats (CIFAR's pickles through an arrays-only
  unpickler, IDX).
- ``fetch``: the one helper that finds a dataset's files under ``--data-dir`` or downloads them
  (checksums verified), and otherwise says how to get them.
- ``image_folder``: ``--dataset image-folder``, a user's own images in class subfolders (local
  or ``s3://``), decoded by ``app.preprocessing``; ``digits_files`` writes the digits that way.
- ``splits``: train / val / test splits and the data fingerprint; ``transforms``: normalize,
  augment.
"""

from app.datasets.fetch import Download, RemoteFile
from app.datasets.image_folder import IMAGE_FOLDER, ImageFolderError, ImageFolderSource
from app.datasets.info import DatasetInfo, DatasetUnavailableError, RawArrays
from app.datasets.registry import (
    Dataset,
    dataset_info,
    dataset_names,
    get_dataset,
    register_dataset,
    unregister_dataset,
)
from app.datasets.splits import ImageSplits, fingerprint, load_splits
from app.datasets.transforms import augment, normalize

__all__ = [
    "IMAGE_FOLDER",
    "Dataset",
    "DatasetInfo",
    "DatasetUnavailableError",
    "Download",
    "ImageFolderError",
    "ImageFolderSource",
    "ImageSplits",
    "RawArrays",
    "RemoteFile",
    "augment",
    "dataset_info",
    "dataset_names",
    "fingerprint",
    "get_dataset",
    "load_splits",
    "normalize",
    "register_dataset",
    "unregister_dataset",
]
