"""Datasets, splits and the batch transforms used in training and serving.

Every dataset is held in memory as uint8 tensors shaped (N, C, H, W): CIFAR-10/100 and
Fashion-MNIST are small enough, and it lets augmentation and normalisation run per batch on
whatever device trains (no per-image Python, no DataLoader worker processes).

On-disk formats are the published ones, read by our own readers:
- CIFAR-10 / CIFAR-100: the "python version" archives (``cifar-10-batches-py/``,
  ``cifar-100-python/``), read with an unpickler that only admits numpy arrays, so a tampered
  file cannot run code.
- Fashion-MNIST: the IDX files (``fashion_mnist/*-ubyte.gz``), gzip or plain.
- digits: scikit-learn ships it (8x8 handwritten digits, 0..16 ink levels); always offline.
"""

from __future__ import annotations

import functools
import gzip
import hashlib

# Only ever used through _ArraysOnlyUnpickler below, which admits numpy arrays alone.
import pickle  # nosec B403
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch


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


CIFAR10_CLASSES = (
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
)
FASHION_CLASSES = (
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
)

DATASETS: dict[str, DatasetInfo] = {
    # Shifts of one pixel are a fair augmentation for 8x8 digits; a flip would change the digit.
    "digits": DatasetInfo(
        "digits", tuple(str(d) for d in range(10)), 1, 8, (0.3053,), (0.3759,), 1, False
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        CIFAR10_CLASSES,
        3,
        32,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        4,
        True,
    ),
    # CIFAR-100's class names come from its meta file; placeholders until it is read.
    "cifar100": DatasetInfo(
        "cifar100",
        tuple(f"class_{i}" for i in range(100)),
        3,
        32,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        4,
        True,
    ),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", FASHION_CLASSES, 1, 28, (0.2860,), (0.3530,), 2, True
    ),
}


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


# ---------------------------------------------------------------------------------------------
# Readers of the published formats


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR "python version" batches: dicts, lists, bytes and numpy arrays only."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2: text -> bytes only
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> dict[bytes, Any]:
    with path.open("rb") as handle:
        batch = _ArraysOnlyUnpickler(handle, encoding="bytes").load()
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR batch (expected a dict)")
    return batch


def _cifar_images(batch: dict[bytes, Any], path: Path) -> np.ndarray:
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: expected data of shape (N, 3072), got {data.shape}")
    return data.reshape(-1, 3, 32, 32)


def read_cifar(
    root: Path, name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read CIFAR-10 (``cifar-10-batches-py``) or CIFAR-100 (``cifar-100-python``)."""
    if name == "cifar10":
        folder, train_files, test_file = (
            root,
            [f"data_batch_{i}" for i in range(1, 6)],
            "test_batch",
        )
        label_key, meta_file, names_key = b"labels", "batches.meta", b"label_names"
    else:
        folder, train_files, test_file = root, ["train"], "test"
        label_key, meta_file, names_key = b"fine_labels", "meta", b"fine_label_names"

    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        batches = [(_read_cifar_batch(folder / f), folder / f) for f in files]
        images = np.concatenate([_cifar_images(b, p) for b, p in batches])
        labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b, _ in batches])
        return images, labels

    x_train, y_train = read(train_files)
    x_test, y_test = read([test_file])
    meta = _read_cifar_batch(folder / meta_file)
    classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in meta[names_key])
    return x_train, y_train, x_test, y_test, classes


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST / Fashion-MNIST format), gzip-compressed or plain."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    expected = int(np.prod(dims))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != expected:
        raise ValueError(f"{path}: header says {expected} values, file has {body.size}")
    return body.reshape(tuple(int(d) for d in dims)).copy()  # writable, owns its memory


# ---------------------------------------------------------------------------------------------
# Locations and downloads

_FASHION_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


@dataclass(frozen=True)
class _Archive:
    folder: str  # where the files live under --data-dir
    url: str
    md5: str


_CIFAR_ARCHIVES = {
    "cifar10": _Archive(
        "cifar-10-batches-py",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
    ),
    "cifar100": _Archive(
        "cifar-100-python",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
    ),
}


def _download(url: str, dest: Path, md5: str) -> None:
    """Download to dest through a temporary file, checking the published MD5."""
    print(f"downloading {url} -> {dest}", flush=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5(usedforsecurity=False)
    with (
        # The URLs are this module's fixed https/http constants, never user input.
        urllib.request.urlopen(url, timeout=30) as response,  # noqa: S310  # nosec B310
        tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp,
    ):
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            tmp.write(chunk)
    if digest.hexdigest() != md5:
        Path(tmp.name).unlink()
        raise DatasetUnavailableError(f"{url}: checksum mismatch, download corrupted")
    Path(tmp.name).replace(dest)


def _unavailable(
    name: str, where: Path, how: str, cause: Exception | None
) -> DatasetUnavailableError:
    reason = f" (download failed: {cause})" if cause else " (download disabled)"
    return DatasetUnavailableError(
        f"dataset {name!r} not found in {where}{reason}. {how} "
        f"Or pass --data-dir to where the files already are."
    )


def _ensure_cifar(name: str, data_dir: Path, download: bool) -> Path:
    archive = _CIFAR_ARCHIVES[name]
    folder = data_dir / archive.folder
    if folder.is_dir():
        return folder
    how = f"Download {archive.url} and extract it into {data_dir} (it creates {archive.folder}/)."
    if not download:
        raise _unavailable(name, folder, how, None)
    tarball = data_dir / Path(archive.url).name
    try:
        if not tarball.exists():
            _download(archive.url, tarball, archive.md5)
        with tarfile.open(tarball) as tar:
            tar.extractall(data_dir, filter="data")
    except (OSError, DatasetUnavailableError, tarfile.TarError) as exc:
        raise _unavailable(name, folder, how, exc) from exc
    return folder


def _ensure_fashion(data_dir: Path, download: bool) -> Path:
    folder = data_dir / "fashion_mnist"
    missing = [
        f
        for f in _FASHION_FILES
        if not (folder / f).exists() and not (folder / f.removesuffix(".gz")).exists()
    ]
    if not missing:
        return folder
    how = f"Download {', '.join(missing)} from {_FASHION_URL} into {folder}/."
    if not download:
        raise _unavailable("fashion_mnist", folder, how, None)
    try:
        for filename in missing:
            _download(_FASHION_URL + filename, folder / filename, _FASHION_FILES[filename])
    except (OSError, DatasetUnavailableError) as exc:
        raise _unavailable("fashion_mnist", folder, how, exc) from exc
    return folder


def _read_fashion(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    def idx(stem: str) -> np.ndarray:
        gz = folder / f"{stem}.gz"
        return read_idx(gz if gz.exists() else folder / stem)

    x_train, y_train = idx("train-images-idx3-ubyte"), idx("train-labels-idx1-ubyte")
    x_test, y_test = idx("t10k-images-idx3-ubyte"), idx("t10k-labels-idx1-ubyte")
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError(f"{folder}: image and label counts differ")
    return x_train[:, None], y_train.astype(np.int64), x_test[:, None], y_test.astype(np.int64)


def _read_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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
    return x_train, y_train, x_test, y_test


# ---------------------------------------------------------------------------------------------
# Splits


def _fingerprint(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _stratified_val_split(
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


def load_raw(
    name: str, data_dir: Path, download: bool = True
) -> tuple[DatasetInfo, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The official train and test arrays of a dataset, reading (or downloading) its files."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    info = DATASETS[name]
    if name == "digits":
        x_train, y_train, x_test, y_test = _read_digits()
    elif name == "fashion_mnist":
        x_train, y_train, x_test, y_test = _read_fashion(_ensure_fashion(data_dir, download))
    else:
        x_train, y_train, x_test, y_test, classes = read_cifar(
            _ensure_cifar(name, data_dir, download), name
        )
        info = DatasetInfo(**{**info.__dict__, "classes": classes})
    if x_train.shape[1:] != (info.channels, info.image_size, info.image_size):
        raise ValueError(f"{name}: unexpected image shape {x_train.shape[1:]}")
    return info, x_train, y_train, x_test, y_test


def load_dataset(
    name: str,
    data_dir: Path = Path("data"),
    download: bool = True,
    val_fraction: float = 0.1,
    seed: int = 42,
) -> ImageSplits:
    """Train / val / test splits; val is a seeded, stratified share of the official train."""
    info, x_train, y_train, x_test, y_test = load_raw(name, Path(data_dir), download)
    train_idx, val_idx = _stratified_val_split(y_train, val_fraction, seed)
    return ImageSplits(
        info=info,
        x_train=torch.from_numpy(np.ascontiguousarray(x_train[train_idx])),
        y_train=torch.from_numpy(y_train[train_idx]),
        x_val=torch.from_numpy(np.ascontiguousarray(x_train[val_idx])),
        y_val=torch.from_numpy(y_train[val_idx]),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(y_test),
        fingerprint=_fingerprint(x_train, y_train, x_test, y_test),
    )


# ---------------------------------------------------------------------------------------------
# Batch transforms: the same code on CPU and GPU, for training, evaluation and serving


@functools.cache
def _channel_stats(info: DatasetInfo, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Built once per device: a host-to-device copy per batch would stall a GPU's queue. Never
    # as inference tensors, whichever caller comes first (serving, then training, say).
    with torch.inference_mode(False):
        mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(info.std, device=device).view(1, -1, 1, 1)
    return mean, std


def normalize(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32, scaled to [0, 1] and standardised per channel."""
    mean, std = _channel_stats(info, images.device)
    return (images.float().div_(255) - mean) / std


def augment(
    images: torch.Tensor, info: DatasetInfo, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, vectorised over the batch.
    Random draws happen on the images' device (or the generator's), so a GPU batch needs no
    copy from the host."""
    n, _, h, w = images.shape
    pad = info.crop_padding
    draw_on = generator.device if generator else images.device
    if pad:
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
        offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=draw_on)
        offsets = offsets.to(images.device)
        rows = (torch.arange(h, device=images.device)[None] + offsets[0, :, None])[:, None, :, None]
        cols = (torch.arange(w, device=images.device)[None] + offsets[1, :, None])[:, None, None, :]
        batch = torch.arange(n, device=images.device)[:, None, None, None]
        channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        images = padded[batch, channels, rows, cols]
    if info.flip:
        flip = torch.rand(n, generator=generator, device=draw_on) < 0.5
        images = torch.where(flip.to(images.device)[:, None, None, None], images.flip(3), images)
    return images
