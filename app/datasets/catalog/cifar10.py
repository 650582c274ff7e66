"""CIFAR-10: 32x32 colour photos in 10 classes, the "python version" archive."""

from __future__ import annotations

from app.datasets.fetch import Download, RemoteFile
from app.datasets.formats import CifarLayout
from app.datasets.info import DatasetInfo
from app.datasets.registry import Dataset, register_dataset

LAYOUT = CifarLayout(
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    label_key=b"labels",
    meta_file="batches.meta",
    names_key=b"label_names",
)

CIFAR10 = register_dataset(
    Dataset(
        DatasetInfo(
            name="cifar10",
            classes=(
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ),
            channels=3,
            image_size=32,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            crop_padding=4,
            flip=True,
        ),
        LAYOUT.read,
        source=Download(
            folder="cifar-10-batches-py",
            files=(
                RemoteFile(
                    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    "c58f30108f718f92721af3b95e74349a",
                ),
            ),
            archive=True,
        ),
        summary="colour photos of objects and animals (Krizhevsky, 2009)",
    )
)
