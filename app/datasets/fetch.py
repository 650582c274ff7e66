"""Finding a dataset's files under ``--data-dir``, or downloading them there: one helper for
every dataset, driven by the ``Download`` the dataset declares."""

from __future__ import annotations

import hashlib
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from app.datasets.info import DatasetUnavailableError


@dataclass(frozen=True)
class RemoteFile:
    """One published file and the MD5 its publisher lists."""

    url: str
    md5: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Download:
    """Where a dataset's files live under ``--data-dir`` and where they come from.

    ``archive=False``: the files themselves go into ``folder`` (each may also be there unzipped,
    without its ``.gz``). ``archive=True``: each file is a tarball, kept in ``--data-dir``, that
    unpacks into ``folder``; the folder's presence means the dataset is there.
    """

    folder: str
    files: tuple[RemoteFile, ...]
    archive: bool = False

    def missing(self, data_dir: Path) -> list[RemoteFile]:
        folder = data_dir / self.folder
        if self.archive:
            return [] if folder.is_dir() else list(self.files)
        return [
            f
            for f in self.files
            if not (folder / f.filename).exists()
            and not (folder / f.filename.removesuffix(".gz")).exists()
        ]

    def how_to_get(self, data_dir: Path, missing: list[RemoteFile]) -> str:
        urls = ", ".join(f.url for f in missing)
        if self.archive:
            return f"Download {urls} and extract it into {data_dir} (it creates {self.folder}/)."
        return f"Download {urls} into {data_dir / self.folder}/."

    def fetch(self, remote: RemoteFile, data_dir: Path) -> None:
        if not self.archive:
            _download(remote, data_dir / self.folder / remote.filename)
            return
        tarball = data_dir / remote.filename
        if not tarball.exists():
            _download(remote, tarball)
        with tarfile.open(tarball) as tar:
            tar.extractall(data_dir, filter="data")


def _download(remote: RemoteFile, dest: Path) -> None:
    """Download to dest through a temporary file, checking the published MD5."""
    print(f"downloading {remote.url} -> {dest}", flush=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5(usedforsecurity=False)
    with (
        # The URLs are the dataset modules' fixed constants, never user input.
        urllib.request.urlopen(remote.url, timeout=30) as response,  # noqa: S310  # nosec B310
        tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp,
    ):
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            tmp.write(chunk)
    if digest.hexdigest() != remote.md5:
        Path(tmp.name).unlink()
        raise DatasetUnavailableError(f"{remote.url}: checksum mismatch, download corrupted")
    Path(tmp.name).replace(dest)


def _unavailable(
    name: str, where: Path, how: str, cause: Exception | None
) -> DatasetUnavailableError:
    reason = f" (download failed: {cause})" if cause else " (download disabled)"
    return DatasetUnavailableError(
        f"dataset {name!r} not found in {where}{reason}. {how} "
        f"Or pass --data-dir to where the files already are."
    )


def ensure(name: str, source: Download, data_dir: Path, download: bool) -> Path:
    """The dataset's folder, its files present: found, or downloaded when allowed. Otherwise a
    ``DatasetUnavailableError`` that says which URLs to fetch and where to put them."""
    folder = data_dir / source.folder
    missing = source.missing(data_dir)
    if not missing:
        return folder
    how = source.how_to_get(data_dir, missing)
    if not download:
        raise _unavailable(name, folder, how, None)
    try:
        for remote in missing:
            source.fetch(remote, data_dir)
    except (OSError, DatasetUnavailableError, tarfile.TarError) as exc:
        raise _unavailable(name, folder, how, exc) from exc
    return folder
