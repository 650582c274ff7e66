"""Fashion-MNIST: 28x28 greyscale photos of clothing in 10 classes, as IDX files."""

from __future__ import annotations

from app.datasets.fetch import Download, RemoteFile
from app.datasets.formats import read_mnist_folder
from app.datasets.info import DatasetInfo
from app.datasets.registry import Dataset, register_dataset

URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

FASHION_MNIST = register_dataset(
    Dataset(
        DatasetInfo(
            name="fashion_mnist",
            classes=(
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ),
            channels=1,
            image_size=28,
            mean=(0.2860,),
            std=(0.3530,),
            crop_padding=2,
            flip=True,
        ),
        read_mnist_folder,
        source=Download(
            folder="fashion_mnist",
            files=tuple(RemoteFile(URL + name, md5) for name, md5 in FILES.items()),
        ),
        summary="greyscale photos of clothing (Zalando, 2017)",
    )
)
