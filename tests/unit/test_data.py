import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from app.data import (
    DATASETS,
    DatasetUnavailableError,
    augment,
    load_dataset,
    normalize,
    read_idx,
)


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


def test_digits_splits_are_stratified_seeded_and_disjoint() -> None:
    a = load_dataset("digits", seed=1)
    b = load_dataset("digits", seed=1)
    c = load_dataset("digits", seed=2)
    assert a.x_train.dtype == torch.uint8 and a.x_train.shape[1:] == (1, 8, 8)
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == 1797
    assert torch.equal(a.x_val, b.x_val)
    assert not torch.equal(a.x_val, c.x_val)
    assert torch.equal(a.x_test, c.x_test)  # the test split never depends on the seed
    assert set(a.y_val.tolist()) == set(range(10))
    assert a.fingerprint == c.fingerprint and len(a.fingerprint) == 64


def test_fashion_mnist_read_from_idx_files(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    splits = load_dataset("fashion_mnist", tmp_path, download=False, val_fraction=0.25)
    assert splits.x_train.shape[1:] == (1, 28, 28)
    assert len(splits.x_train) + len(splits.x_val) == 40
    assert len(splits.x_test) == 20
    assert splits.info.classes[0] == "T-shirt/top"


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_read_from_python_batches(tmp_path: Path, name: str) -> None:
    first = write_cifar(tmp_path, name)
    splits = load_dataset(name, tmp_path, download=False, val_fraction=0.2)
    assert splits.x_test.shape[1:] == (3, 32, 32)
    assert splits.info.num_classes == (10 if name == "cifar10" else 100)
    assert splits.info.classes[0] in ("c0", "f0")
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
        load_dataset("cifar10", tmp_path, download=False)
    assert not marker.exists()


def test_missing_dataset_offline_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailableError) as error:
        load_dataset("cifar10", tmp_path, download=False)
    message = str(error.value)
    assert "cifar-10-python.tar.gz" in message and str(tmp_path) in message


def test_idx_with_wrong_size_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="header says 10"):
        read_idx(path)


def test_normalize_standardises_per_channel() -> None:
    info = DATASETS["cifar10"]
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize(images, info)
    expected = (1 - torch.tensor(info.mean)) / torch.tensor(info.std)
    assert torch.allclose(out[0, :, 0, 0], expected)


def test_augment_crops_and_flips_without_changing_content_or_shape() -> None:
    info = DATASETS["cifar10"]
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
    info = DATASETS["digits"]
    assert info.flip is False
    images = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8).repeat(32, 1, 1, 1)
    out = augment(images, info, torch.Generator().manual_seed(0))
    # 1-pixel shifts only: column order within each row is preserved (no mirror image).
    for img in out:
        row = img[0, 4]
        nonzero = row[row > 0]
        assert torch.all(nonzero[1:] > nonzero[:-1])
