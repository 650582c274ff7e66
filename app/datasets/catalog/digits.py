"""digits: scikit-learn's 8x8 handwritten digits (0..16 ink levels), always offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.datasets.info import DatasetInfo, RawArrays
from app.datasets.registry import Dataset, register_dataset


def read(_: Path) -> RawArrays:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # 0..16 ink levels -> 0..255 bytes, the same scale as every other dataset.
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    # digits has no official test split: a fixed, stratified 20% so every run shares it.
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=0
    )
    return RawArrays(x_train, y_train, x_test, y_test)


DIGITS = register_dataset(
    Dataset(
        # Shifts of one pixel are a fair augmentation for 8x8 digits; a flip changes the digit.
        DatasetInfo(
            name="digits",
            classes=tuple(str(d) for d in range(10)),
            channels=1,
            image_size=8,
            mean=(0.3053,),
            std=(0.3759,),
            crop_padding=1,
            flip=False,
        ),
        read,
        source=None,
        summary="handwritten digits; ships with scikit-learn, always offline",
    )
)
