"""``image-folder``: a user's own images, one subfolder per class (torchvision's ImageFolder
layout), in a local folder or under ``s3://bucket/prefix``.

    root/
      cat/  a.jpg  b.png  ...
      dog/  c.webp  sub/d.bmp  ...

- Classes are the sorted subfolder names; every file under a class folder (at any depth) is
  tried. Hidden files and folders (``.DS_Store``, ``.git``) are ignored.
- Each file is decoded by ``app.preprocessing`` (bounded, allow-listed decoders: PNG, JPEG,
  WebP, BMP), converted to ``channels`` and centre-cropped / resized to ``image_size``.
- A file that cannot be decoded (corrupt, truncated, not an image, too large), and any file at
  the root outside a class folder, is skipped and listed in ``ImageSplits.skipped``: never fatal.
- ``ImageFolderError`` before any training: fewer than 2 classes, a class with no readable
  image, or a class too small to give train, val and test one image each.
- The test split is a stratified ``test_fraction`` of each class, drawn with a fixed seed over
  the class's images sorted by content digest: the same files always form the test set (whatever
  the training seed, so ``evaluate`` reloads it), and renaming a file changes nothing.
- The fingerprint is a sha256 over the declared shape and, in that order, each image's class
  and the sha256 of its bytes: it follows contents and labels, not names.
- mean / std are computed from the train images (after the val split).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.datasets.info import DatasetInfo, DatasetUnavailableError

IMAGE_FOLDER = "image-folder"  # the --dataset name; also DatasetInfo.name and ModelSpec.dataset
TEST_SPLIT_SEED = 0  # fixed: the test split never depends on the training seed
SKIPPED_SHOWN = 10  # names printed on the console; the rest are counted
# Bounds for a user's own files: larger than an HTTP request's, still bounded.
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_FILE_PIXELS = 8192 * 8192


class ImageFolderError(ValueError):
    """The folder's images cannot make a dataset (too few classes or images per class)."""


@dataclass(frozen=True)
class ImageFolderSource:
    """Where the images are and the shape they are loaded at."""

    uri: str  # a local path, file:///path or s3://bucket/prefix
    image_size: int = 32
    channels: int = 3
    test_fraction: float = 0.2

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    @property
    def canonical_uri(self) -> str:
        """file:///absolute/path or s3://bucket/prefix/ (for lineage)."""
        if self.is_s3:
            return self.uri.rstrip("/") + "/"
        return Path(self.uri.removeprefix("file://")).expanduser().resolve().as_uri()


@dataclass(frozen=True)
class _Entry:
    key: str  # the name a person reads in the skipped list: the path below the root
    label: int | None  # None: outside any class folder
    size: int


@dataclass(frozen=True)
class FolderImages:
    """Every readable image of the folder, in the canonical order (class, content digest)."""

    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)
    digests: list[str]  # sha256 of each image's file bytes
    classes: tuple[str, ...]
    skipped: list[str]  # "path: reason", sorted by path


def _hidden(part: str) -> bool:
    return part.startswith(".")


def _list_local(root: Path) -> tuple[list[str], list[_Entry], Callable[[str], bytes]]:
    if not root.is_dir():
        raise DatasetUnavailableError(f"image-folder: {root} is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not _hidden(p.name))
    entries = [
        _Entry(p.name, None, p.stat().st_size)
        for p in sorted(root.iterdir())
        if p.is_file() and not _hidden(p.name)
    ]
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and not any(_hidden(part) for part in rel.parts):
                entries.append(_Entry(rel.as_posix(), label, path.stat().st_size))
    return classes, entries, lambda key: (root / key).read_bytes()


def s3_client() -> Any:
    """A boto3 S3 client; AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL point it at an S3-compatible
    store (MinIO, moto), the credentials come from boto3's usual chain."""
    import boto3

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return boto3.client("s3", endpoint_url=endpoint or None)


def _list_s3(uri: str) -> tuple[list[str], list[_Entry], Callable[[str], bytes]]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    client = s3_client()
    objects: list[tuple[str, int]] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            objects += [(o["Key"][len(prefix) :], int(o["Size"])) for o in page.get("Contents", [])]
    except Exception as exc:  # botocore raises ClientError, EndpointConnectionError, NoCredentials
        raise DatasetUnavailableError(f"image-folder: cannot list {uri}: {exc}") from exc
    objects = [(k, s) for k, s in objects if k and not k.endswith("/")]
    objects = [(k, s) for k, s in objects if not any(_hidden(p) for p in k.split("/"))]
    classes = sorted({k.split("/", 1)[0] for k, _ in objects if "/" in k})
    index = {name: label for label, name in enumerate(classes)}
    entries = [
        _Entry(k, index[k.split("/", 1)[0]] if "/" in k else None, s) for k, s in sorted(objects)
    ]

    def read(key: str) -> bytes:
        body: bytes = client.get_object(Bucket=bucket, Key=prefix + key)["Body"].read()
        return body

    return classes, entries, read


def _decode(data: bytes, image_size: int, channels: int) -> np.ndarray:
    from app.preprocessing import Limits, decode_image, open_image

    limits = Limits(max_bytes=MAX_FILE_BYTES, max_pixels=MAX_FILE_PIXELS)
    return decode_image(open_image(data, image_size, channels, limits), image_size, channels)


def read_folder(source: ImageFolderSource) -> FolderImages:
    """Decode every file of the folder; list what could not be read."""
    from app.preprocessing import InputError

    if source.is_s3:
        classes, entries, read = _list_s3(source.uri)
    else:
        classes, entries, read = _list_local(Path(source.uri.removeprefix("file://")).expanduser())
    skipped = [f"{e.key}: not in a class folder" for e in entries if e.label is None]

    def load(entry: _Entry) -> tuple[_Entry, np.ndarray | None, str]:
        if entry.size > MAX_FILE_BYTES:
            return entry, None, f"{entry.size} bytes; the limit is {MAX_FILE_BYTES}"
        try:
            data = read(entry.key)
        except OSError as exc:
            return entry, None, f"unreadable: {exc}"
        try:
            image = _decode(data, source.image_size, source.channels)
        except InputError as exc:
            return entry, None, exc.detail
        return entry, image, hashlib.sha256(data).hexdigest()

    rows: list[tuple[int, str, np.ndarray]] = []
    in_classes = [e for e in entries if e.label is not None]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for entry, image, note in pool.map(load, in_classes):
            if image is None or entry.label is None:
                skipped.append(f"{entry.key}: {note}")
            else:
                rows.append((entry.label, note, image))
    rows.sort(key=lambda row: (row[0], row[1]))  # by class, then content: never by name
    shape = (0, source.channels, source.image_size, source.image_size)
    return FolderImages(
        images=np.stack([r[2] for r in rows]) if rows else np.zeros(shape, np.uint8),
        labels=np.array([r[0] for r in rows], dtype=np.int64),
        digests=[r[1] for r in rows],
        classes=tuple(classes),
        skipped=sorted(skipped),
    )


def _split_sizes(n: int, test_fraction: float, val_fraction: float) -> tuple[int, int, int]:
    """Train, val, test counts of a class of n images (val as ``stratified_val_split`` does)."""
    n_test = round(n * test_fraction)
    n_val = round((n - n_test) * val_fraction)
    return n - n_test - n_val, n_val, n_test


def min_class_size(test_fraction: float, val_fraction: float) -> int:
    n = 3
    while min(_split_sizes(n, test_fraction, val_fraction)) < 1:
        n += 1
    return n


def check_classes(
    folder: FolderImages, uri: str, test_fraction: float, val_fraction: float
) -> None:
    """ImageFolderError unless there are 2+ classes each big enough for train, val and test."""
    if len(folder.classes) < 2:
        found = ", ".join(folder.classes) or "none"
        raise ImageFolderError(
            f"image-folder {uri}: needs at least 2 class subfolders, found {found}"
        )
    counts = np.bincount(folder.labels, minlength=len(folder.classes))
    empty = [name for name, count in zip(folder.classes, counts, strict=True) if count == 0]
    if empty:
        raise ImageFolderError(
            f"image-folder {uri}: no readable images in class folder(s) {', '.join(empty)}"
        )
    need = min_class_size(test_fraction, val_fraction)
    small = [
        f"{name} ({count})"
        for name, count in zip(folder.classes, counts, strict=True)
        if min(_split_sizes(int(count), test_fraction, val_fraction)) < 1
    ]
    if small:
        raise ImageFolderError(
            f"image-folder {uri}: too few images in {', '.join(small)}: with test fraction "
            f"{test_fraction} and val fraction {val_fraction} each class needs at least {need} "
            "(one each for train, val and test)"
        )


def folder_fingerprint(folder: FolderImages, source: ImageFolderSource) -> str:
    digest = hashlib.sha256(
        f"{IMAGE_FOLDER} {source.channels}x{source.image_size}x{source.image_size} "
        f"test_fraction={source.test_fraction}\n".encode()
    )
    for label, file_digest in zip(folder.labels.tolist(), folder.digests, strict=True):
        digest.update(f"{folder.classes[label]}\t{file_digest}\n".encode())
    return digest.hexdigest()


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, on the 0..1 scale ``normalize`` uses."""
    scaled = images.astype(np.float64) / 255.0
    mean = scaled.mean(axis=(0, 2, 3))
    std = np.maximum(scaled.std(axis=(0, 2, 3)), 1e-3)  # a blank channel still divides safely
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def folder_info(
    classes: tuple[str, ...], source: ImageFolderSource, train: np.ndarray
) -> DatasetInfo:
    mean, std = channel_stats(train)
    return DatasetInfo(
        name=IMAGE_FOLDER,
        classes=classes,
        channels=source.channels,
        image_size=source.image_size,
        mean=mean,
        std=std,
        # Small shifts suit any image; a flip would change a digit or a letter, so it stays off.
        crop_padding=max(1, source.image_size // 8),
        flip=False,
    )


def describe_skipped(skipped: list[str], shown: int = SKIPPED_SHOWN) -> Iterator[str]:
    """The console lines for the skipped files: the first ``shown``, then a count."""
    if not skipped:
        return
    yield f"image-folder: skipped {len(skipped)} file(s) that are not readable images:"
    for line in skipped[:shown]:
        yield f"  {line}"
    if len(skipped) > shown:
        yield f"  ... and {len(skipped) - shown} more"
