"""CIFAR-100: 32x32 colour photos in 100 fine classes, the "python version" archive."""

from __future__ import annotations

from app.datasets.fetch import Download, RemoteFile
from app.datasets.formats import CifarLayout
from app.datasets.info import DatasetInfo
from app.datasets.registry import Dataset, register_dataset

LAYOUT = CifarLayout(
    train_files=("train",),
    test_file="test",
    label_key=b"fine_labels",
    meta_file="meta",
    names_key=b"fine_label_names",
)

CIFAR100 = register_dataset(
    Dataset(
        DatasetInfo(
            name="cifar100",
            # The class names come from the meta file; placeholders until it is read.
            classes=tuple(f"class_{i}" for i in range(100)),
            channels=3,
            image_size=32,
            mean=(0.5071, 0.4865, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            crop_padding=4,
            flip=True,
        ),
        LAYOUT.read,
        source=Download(
            folder="cifar-100-python",
            files=(
                RemoteFile(
                    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                    "eb9058c3a382ffc7106e4002c42a8d85",
                ),
            ),
            archive=True,
        ),
        summary="colour photos, its fine labels (Krizhevsky, 2009)",
    )
)
