import dataclasses
import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from app.datasets import (
    DatasetUnavailableError,
    Download,
    RemoteFile,
    augment,
    dataset_info,
    dataset_names,
    get_dataset,
    load_splits,
    normalize,
)
from app.datasets.fetch import ensure
from app.datasets.formats import read_idx


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def write_fashion(root: Path, n_train: int = 40, n_test: int = 20) -> None:
    folder = root / "fashion_mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    # Plain (uncompressed) files are read too.
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)), False)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10, False)


def write_cifar(root: Path, name: str, per_batch: int = 20) -> np.ndarray:
    """CIFAR's "python version": pickled dicts of bytes keys, data as (N, 3072) uint8."""
    rng = np.random.default_rng(1)
    classes = 10 if name == "cifar10" else 100
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        files, label_key = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels"
        meta = ("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(classes)]})
    else:
        folder = root / "cifar-100-python"
        files, label_key = ["train", "test"], b"fine_labels"
        meta = ("meta", {b"fine_label_names": [f"f{i}".encode() for i in range(classes)]})
    folder.mkdir(parents=True)
    first = None
    for filename in files:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        first = data if first is None else first
        batch = {b"data": data, label_key: rng.integers(0, classes, per_batch).tolist()}
        (folder / filename).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / meta[0]).write_bytes(pickle.dumps(meta[1], protocol=2))
    return first


# A writer of tiny files in the published format, for every dataset read from --data-dir.
WRITERS: dict[str, Callable[[Path], object]] = {
    "cifar10": lambda root: write_cifar(root, "cifar10"),
    "cifar100": lambda root: write_cifar(root, "cifar100"),
    "fashion_mnist": write_fashion,
}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


@pytest.mark.parametrize("name", dataset_names())
def test_every_dataset_reads_tiny_files_in_its_published_format(tmp_path: Path, name: str) -> None:
    dataset = get_dataset(name)
    if dataset.source is not None:
        assert name in WRITERS, f"add a writer of tiny {name} files (its real format) to WRITERS"
        WRITERS[name](tmp_path)
    splits = load_splits(name, tmp_path, download=False, val_fraction=0.25)
    info = splits.info
    shape = (info.channels, info.image_size, info.image_size)
    assert len(info.mean) == len(info.std) == info.channels
    for images, labels in (
        (splits.x_train, splits.y_train),
        (splits.x_val, splits.y_val),
        (splits.x_test, splits.y_test),
    ):
        assert images.dtype == torch.uint8 and images.shape[1:] == shape
        assert labels.dtype == torch.int64 and len(labels) == len(images)
        assert torch.all((labels >= 0) & (labels < info.num_classes))
    assert len(splits.x_train) > 0 and len(splits.x_test) > 0


@pytest.mark.parametrize("name", [n for n in dataset_names() if get_dataset(n).source])
def test_missing_dataset_offline_says_where_to_put_it(tmp_path: Path, name: str) -> None:
    source = get_dataset(name).source
    assert source is not None
    with pytest.raises(DatasetUnavailableError) as error:
        load_splits(name, tmp_path, download=False)
    message = str(error.value)
    assert str(tmp_path) in message and source.folder in message and "download disabled" in message
    assert all(remote.url in message for remote in source.files)


def test_digits_splits_are_stratified_seeded_and_disjoint() -> None:
    a = load_splits("digits", seed=1)
    b = load_splits("digits", seed=1)
    c = load_splits("digits", seed=2)
    assert a.x_train.dtype == torch.uint8 and a.x_train.shape[1:] == (1, 8, 8)
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == 1797
    assert torch.equal(a.x_val, b.x_val)
    assert not torch.equal(a.x_val, c.x_val)
    assert torch.equal(a.x_test, c.x_test)  # the test split never depends on the seed
    assert set(a.y_val.tolist()) == set(range(10))
    assert a.fingerprint == c.fingerprint and len(a.fingerprint) == 64


def test_fashion_mnist_read_from_idx_files(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    splits = load_splits("fashion_mnist", tmp_path, download=False, val_fraction=0.25)
    assert splits.x_train.shape[1:] == (1, 28, 28)
    assert len(splits.x_train) + len(splits.x_val) == 40
    assert len(splits.x_test) == 20
    assert splits.info.classes[0] == "T-shirt/top"


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_read_from_python_batches(tmp_path: Path, name: str) -> None:
    first = write_cifar(tmp_path, name)
    splits = load_splits(name, tmp_path, download=False, val_fraction=0.2)
    assert splits.x_test.shape[1:] == (3, 32, 32)
    assert splits.info.num_classes == (10 if name == "cifar10" else 100)
    assert splits.info.classes[0] in ("c0", "f0")  # the names come from the meta file
    # Pixels land in (C, H, W) order exactly as the format defines: R plane, G plane, B plane.
    all_train = torch.cat([splits.x_train, splits.x_val])
    expected = torch.from_numpy(first.reshape(-1, 3, 32, 32))
    assert any(torch.equal(img, expected[0]) for img in all_train)


def test_tampered_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar10")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.touch, (marker,))

    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_splits("cifar10", tmp_path, download=False)
    assert not marker.exists()


def test_idx_with_wrong_size_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="header says 10"):
        read_idx(path)


def test_download_fetches_checks_and_reads_published_files(tmp_path: Path) -> None:
    """The shared helper end to end, over file:// URLs: a mirror of Fashion-MNIST's four IDX
    files is downloaded into --data-dir, checksums verified, then read by the real reader."""
    write_fashion(tmp_path / "mirror")
    mirror = tmp_path / "mirror" / "fashion_mnist"
    for plain in mirror.glob("*-ubyte"):  # the publisher serves every file gzipped
        plain.with_name(plain.name + ".gz").write_bytes(gzip.compress(plain.read_bytes()))
        plain.unlink()
    files = tuple(RemoteFile(p.as_uri(), md5(p)) for p in sorted(mirror.glob("*.gz")))
    dataset = dataclasses.replace(
        get_dataset("fashion_mnist"), source=Download("fashion_mnist", files)
    )
    data_dir = tmp_path / "data"
    info, raw = dataset.load(data_dir, download=True)
    assert sorted(p.name for p in (data_dir / "fashion_mnist").iterdir()) == sorted(
        f.filename for f in files
    )
    assert raw.x_train.shape == (40, 1, 28, 28) and info.name == "fashion_mnist"
    # Present now: nothing more to fetch, even offline.
    assert dataset.load(data_dir, download=False)[1].x_test.shape == (20, 1, 28, 28)


def _tarball(path: Path, folder: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        payload = b"hello"
        member = tarfile.TarInfo(f"{folder}/inside.txt")
        member.size = len(payload)
        tar.addfile(member, io.BytesIO(payload))
    return path


def test_download_unpacks_an_archive_into_data_dir(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path / "tiny.tar.gz", "tiny-batches")
    source = Download("tiny-batches", (RemoteFile(tarball.as_uri(), md5(tarball)),), archive=True)
    data_dir = tmp_path / "data"
    folder = ensure("tiny", source, data_dir, download=True)
    assert folder == data_dir / "tiny-batches"
    assert (folder / "inside.txt").read_bytes() == b"hello"
    assert (data_dir / "tiny.tar.gz").exists()  # kept: a re-extraction needs no download


def test_download_with_wrong_checksum_fails_and_leaves_nothing(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path / "tiny.tar.gz", "tiny-batches")
    source = Download("tiny-batches", (RemoteFile(tarball.as_uri(), "0" * 32),), archive=True)
    data_dir = tmp_path / "data"
    with pytest.raises(DatasetUnavailableError) as error:
        ensure("tiny", source, data_dir, download=True)
    message = str(error.value)
    assert "checksum mismatch" in message and tarball.as_uri() in message
    assert list(data_dir.iterdir()) == []  # no partial download, no folder


def test_normalize_standardises_per_channel() -> None:
    info = dataset_info("cifar10")
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize(images, info)
    expected = (1 - torch.tensor(info.mean)) / torch.tensor(info.std)
    assert torch.allclose(out[0, :, 0, 0], expected)


def test_augment_crops_and_flips_without_changing_content_or_shape() -> None:
    info = dataset_info("cifar10")
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = augment(images, info, generator)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images)
    # A crop shifts by at most `crop_padding`: every output is a shifted (maybe flipped)
    # window of its input, padded with zeros.
    pad = info.crop_padding
    for original, augmented in zip(images[:8], out[:8], strict=True):
        padded = torch.nn.functional.pad(original, (pad, pad, pad, pad))
        windows = [
            padded[:, r : r + 32, c : c + 32]
            for r in range(2 * pad + 1)
            for c in range(2 * pad + 1)
        ]
        assert any(torch.equal(augmented, w) or torch.equal(augmented, w.flip(2)) for w in windows)


def test_digits_are_never_flipped() -> None:
    info = dataset_info("digits")
    assert info.flip is False
    images = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8).repeat(32, 1, 1, 1)
    out = augment(images, info, torch.Generator().manual_seed(0))
    # 1-pixel shifts only: column order within each row is preserved (no mirror image).
    for img in out:
        row = img[0, 4]
        nonzero = row[row > 0]
        assert torch.all(nonzero[1:] > nonzero[:-1])
