"""Where bulk scoring reads and writes: a local folder, an ``s3://`` prefix or a list file of
paths / URIs in, a local folder or an ``s3://`` prefix out (``app.batch_predict``).

Everything here runs on the driver before any Ray work: the inputs are listed (with their
sizes, so an oversized file is refused without being read), an empty input and an output that
already holds a result are refused, and the filesystem is built once (pyarrow's, which Ray Data
takes as ``filesystem=`` and ships to its tasks)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LIST_FILE_SUFFIXES = (".txt", ".lst", ".list")


@dataclass
class InputFiles:
    """The files to score: ``paths`` as the filesystem names them (``bucket/key`` on S3),
    ``missing`` those a list file names that do not exist, ``oversized`` (path, bytes) those
    over the byte cap; ``uri`` turns a filesystem path back into what the user wrote."""

    filesystem: pafs.FileSystem
    scheme: str  # "s3" or "" (local)
    paths: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    oversized: list[tuple[str, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.paths) + len(self.missing) + len(self.oversized)

    def uri(self, path: str) -> str:
        return f"{self.scheme}://{path}" if self.scheme else path


def s3_endpoint() -> str | None:
    """The S3-compatible endpoint the AWS SDKs would use: AWS_ENDPOINT_URL_S3, else
    AWS_ENDPOINT_URL; None for AWS itself."""
    return (
        os.environ.get("AWS_ENDPOINT_URL_S3", "").strip()
        or os.environ.get("AWS_ENDPOINT_URL", "").strip()
        or None
    )


def s3_filesystem() -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem on the configured endpoint (pyarrow does not read
    AWS_ENDPOINT_URL itself: it needs ``endpoint_override``) and region.
    Static keys in this process's environment go into it (pyarrow ships them with the
    filesystem to every task, Ray Data's own metadata tasks included, which no runtime env
    reaches); without them (a pod's web identity) each task resolves its own."""
    options: dict[str, str] = {}
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        options["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        options["secret_key"] = os.environ["AWS_SECRET_ACCESS_KEY"]
        if os.environ.get("AWS_SESSION_TOKEN"):
            options["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    endpoint = s3_endpoint()
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        options["scheme"] = parsed.scheme
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    return pafs.S3FileSystem(**options)


def is_s3(location: str) -> bool:
    return location.startswith("s3://")


def split_location(location: str) -> tuple[pafs.FileSystem, str, str]:
    """``s3://bucket/prefix`` or a local path -> (filesystem, its path, scheme)."""
    if is_s3(location):
        path = location.removeprefix("s3://").strip("/")
        if not path:
            raise ValueError(f"{location!r}: name a bucket (s3://bucket/prefix)")
        return s3_filesystem(), path, "s3"
    if "://" in location:
        raise ValueError(f"{location!r}: only local paths and s3:// URIs are supported")
    return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve()), ""


def is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def parse_list_file(text: str, base: Path) -> list[str]:
    """A list file's entries: one path or URI a line; blank lines and ``#`` comments skipped,
    relative paths taken from the list file's folder, duplicates kept once (first wins)."""
    entries: list[str] = []
    seen: set[str] = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not is_s3(line) and "://" not in line:
            line = str((base / Path(line).expanduser()).resolve())
        if line not in seen:
            seen.add(line)
            entries.append(line)
    return entries


def _list_entries(list_file: Path) -> list[str]:
    try:
        text = list_file.read_text()
    except OSError as exc:
        raise FileNotFoundError(f"--input {list_file}: cannot read: {exc.strerror}") from exc
    entries = parse_list_file(text, list_file.parent)
    schemes = {"s3" if is_s3(entry) else "" for entry in entries}
    if len(schemes) > 1:
        raise ValueError(f"--input {list_file}: mixes s3:// URIs and local paths; use one kind")
    for entry in entries:
        if "://" in entry and not is_s3(entry):
            raise ValueError(f"--input {list_file}: {entry!r}: only local paths and s3:// URIs")
    return entries


def _add(found: InputFiles, path: str, size: int | None, max_bytes: int) -> None:
    if size is not None and size > max_bytes:
        found.oversized.append((path, size))
    else:
        found.paths.append(path)


def _list_file_inputs(list_file: Path, max_bytes: int) -> InputFiles:
    entries = _list_entries(list_file)
    if not entries:
        raise ValueError(f"--input {list_file}: the list file names no images")
    filesystem, _, scheme = split_location(entries[0])
    paths = [split_location(entry)[1] for entry in entries]
    found = InputFiles(filesystem, scheme)
    for path, info in zip(paths, filesystem.get_file_info(paths), strict=True):
        if info.type != pafs.FileType.File:
            found.missing.append(path)
        else:
            _add(found, path, info.size, max_bytes)
    return found


def list_inputs(location: str, max_bytes: int) -> InputFiles:
    """What ``--input`` names, listed: a folder or prefix recursively (image extensions only),
    a list file entry by entry (whatever its extension: named, it is scored or reported)."""
    local = Path(location).expanduser()
    if not is_s3(location) and local.is_file() and local.suffix.lower() in LIST_FILE_SUFFIXES:
        return _list_file_inputs(local, max_bytes)
    filesystem, root, scheme = split_location(location)
    (info,) = filesystem.get_file_info([root])
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"--input {location}: no such folder, prefix or list file")
    found = InputFiles(filesystem, scheme)
    candidates = (
        [info]
        if info.type == pafs.FileType.File
        else filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    )
    for item in sorted(candidates, key=lambda i: i.path):
        if item.type == pafs.FileType.File and is_image_name(item.path):
            _add(found, item.path, item.size, max_bytes)
    if not found.total:
        raise ValueError(
            f"--input {location}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found"
        )
    return found


def check_output(location: str, overwrite: bool) -> tuple[pafs.FileSystem, str, int]:
    """The output's (filesystem, path, entries it holds now). A folder or prefix that already
    holds files is refused (an earlier result is not silently replaced) unless ``overwrite``;
    the caller empties it once the job is sure to run."""
    filesystem, path, _ = split_location(location)
    (info,) = filesystem.get_file_info([path])
    if info.type == pafs.FileType.File:
        raise ValueError(f"--output {location} is a file; name a folder or an s3:// prefix")
    if info.type != pafs.FileType.Directory:
        return filesystem, path, 0
    existing = len(filesystem.get_file_info(pafs.FileSelector(path, recursive=False)))
    if existing and not overwrite:
        raise ValueError(
            f"--output {location} already holds {existing} entries (an earlier result?): "
            "choose another output or pass --overwrite to replace it"
        )
    return filesystem, path, existing
