"""Readers of the published file formats, our own code end to end.

- CIFAR-10 / CIFAR-100 "python version": pickled dicts, read with an unpickler that only admits
  numpy arrays, so a tampered file cannot run code.
- IDX (MNIST, Fashion-MNIST): a big-endian header and raw bytes, gzip-compressed or plain.
"""

from __future__ import annotations

import gzip

# Only ever used through _ArraysOnlyUnpickler below, which admits numpy arrays alone.
import pickle  # nosec B403
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from app.datasets.info import RawArrays


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


def read_pickled_batch(path: Path) -> dict[bytes, Any]:
    """One CIFAR batch or meta file: a dict with bytes keys."""
    with path.open("rb") as handle:
        batch = _ArraysOnlyUnpickler(handle, encoding="bytes").load()
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR batch (expected a dict)")
    return batch


def _cifar_images(batch: dict[bytes, Any], path: Path) -> np.ndarray:
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: expected data of shape (N, 3072), got {data.shape}")
    return data.reshape(-1, 3, 32, 32)  # the format's order: R plane, G plane, B plane


@dataclass(frozen=True)
class CifarLayout:
    """Which files and keys one CIFAR "python version" folder uses."""

    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes
    meta_file: str
    names_key: bytes

    def _read(self, folder: Path, files: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        batches = [(read_pickled_batch(folder / f), folder / f) for f in files]
        images = np.concatenate([_cifar_images(b, p) for b, p in batches])
        labels = np.concatenate([np.asarray(b[self.label_key], dtype=np.int64) for b, _ in batches])
        return images, labels

    def read(self, folder: Path) -> RawArrays:
        x_train, y_train = self._read(folder, self.train_files)
        x_test, y_test = self._read(folder, (self.test_file,))
        meta = read_pickled_batch(folder / self.meta_file)
        names = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in meta[self.names_key])
        return RawArrays(x_train, y_train, x_test, y_test, names)


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


def read_mnist_folder(folder: Path) -> RawArrays:
    """The four MNIST-style IDX files (``{train,t10k}-{images-idx3,labels-idx1}-ubyte``), each
    gzip-compressed (``.gz``) or plain; single-channel images."""

    def idx(stem: str) -> np.ndarray:
        gz = folder / f"{stem}.gz"
        return read_idx(gz if gz.exists() else folder / stem)

    x_train, y_train = idx("train-images-idx3-ubyte"), idx("train-labels-idx1-ubyte")
    x_test, y_test = idx("t10k-images-idx3-ubyte"), idx("t10k-labels-idx1-ubyte")
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError(f"{folder}: image and label counts differ")
    return RawArrays(
        x_train[:, None], y_train.astype(np.int64), x_test[:, None], y_test.astype(np.int64)
    )
