"""Git's index file (``.git/index``, versions 2, 3 and 4) read without git, and a check of a
working tree against it: the dirty flag of a job whose working dir carries ``.git``'s metadata
but no objects (see ``app.code_version``).

The index is untrusted input (it came with a job's working dir): every read is bounded, every
field checked, and anything unexpected raises ``MalformedGitDataError``, never guessed at.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

MAX_INDEX_BYTES = 64 * 1024 * 1024
MAX_SMALL_FILE_BYTES = 32 * 1024 * 1024  # packed-refs, HEAD, loose refs
MAX_ENTRIES = 1_000_000
_CHUNK = 1024 * 1024
_SIGNATURE = b"DIRC"
# Index entry modes (the object type in the high bits).
_TYPE_MASK, _REGULAR, _SYMLINK, _GITLINK = 0o170000, 0o100000, 0o120000, 0o160000
_FLAG_EXTENDED, _STAGE_MASK, _NAME_MASK = 0x4000, 0x3000, 0x0FFF
_EXT_SKIP_WORKTREE, _EXT_INTENT_TO_ADD = 0x4000, 0x2000


class MalformedGitDataError(ValueError):
    """Shipped git metadata that is not what git writes (or was tampered with)."""


@dataclass(frozen=True)
class IndexEntry:
    path: str
    mode: int
    sha: bytes
    stage: int = 0
    skip_worktree: bool = False
    intent_to_add: bool = False


def read_bounded(path: Path, limit: int) -> bytes:
    """A regular file's bytes, at most ``limit``; never through a symlink, never blocking on a
    FIFO or device."""
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise MalformedGitDataError(f"{path.name} is not a regular file")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise MalformedGitDataError(f"{path.name} is larger than {limit} bytes")
    return data


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """Git's offset varint (``decode_varint``): 7 bits a byte, each continuation adds one."""
    value = -1
    for _ in range(10):
        if pos >= len(data):
            break
        byte = data[pos]
        pos += 1
        value = (byte & 0x7F) if value < 0 else ((value + 1) << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, pos
    raise MalformedGitDataError("bad varint in index")


def _check_path(raw: bytes) -> str:
    """A tracked path as git allows it: relative, no '.', '..', '.git' or empty components."""
    try:
        path = raw.decode("utf-8")
    except UnicodeDecodeError:
        path = os.fsdecode(raw)
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") or p.lower() == ".git" for p in parts):
        raise MalformedGitDataError(f"bad path in index: {path!r}")
    return path


def _header(data: bytes, hash_size: int) -> tuple[int, int]:
    """The index's version and entry count, its checksum verified."""
    algo = {20: "sha1", 32: "sha256"}[hash_size]
    if len(data) < 12 + hash_size or data[:4] != _SIGNATURE:
        raise MalformedGitDataError("not a git index")
    trailer = data[-hash_size:]
    # index.skipHash writes zeros instead of the checksum.
    if trailer != bytes(hash_size) and hashlib.new(algo, data[:-hash_size]).digest() != trailer:
        raise MalformedGitDataError("index checksum mismatch")
    version = int.from_bytes(data[4:8], "big")
    count = int.from_bytes(data[8:12], "big")
    if version not in (2, 3, 4):
        raise MalformedGitDataError(f"unsupported index version {version}")
    if count > MAX_ENTRIES or count * (40 + hash_size + 3) > len(data):
        raise MalformedGitDataError("index entry count out of range")
    return version, count


def _entry_path(
    data: bytes, start: int, pos: int, end: int, version: int, previous: bytes
) -> tuple[bytes, int]:
    """An entry's path (bytes) and where the next entry starts."""
    if version == 4:  # the previous path less N bytes, then a NUL-terminated suffix
        strip, pos = _varint(data, pos)
        if strip > len(previous):
            raise MalformedGitDataError("index v4 prefix longer than the previous path")
        nul = data.find(b"\0", pos, end)
        if nul < 0:
            raise MalformedGitDataError("index truncated")
        return previous[: len(previous) - strip] + data[pos:nul], nul + 1
    nul = data.find(b"\0", pos, end)
    if nul < 0:
        raise MalformedGitDataError("index truncated")
    # Entries are NUL-padded to a multiple of 8 bytes, at least one NUL.
    following = start + ((nul - start + 8) & ~7)
    if following > end or data[nul:following].strip(b"\0"):
        raise MalformedGitDataError("bad index entry padding")
    return data[pos:nul], following


def parse_index(data: bytes, hash_size: int = 20) -> list[IndexEntry]:
    """The entries of an index file (``hash_size`` 20 for SHA-1 repositories, 32 for SHA-256)."""
    version, count = _header(data, hash_size)
    fixed = 40 + hash_size + 2  # stat fields, object name, flags
    end = len(data) - hash_size
    entries: list[IndexEntry] = []
    pos, previous = 12, b""
    for _ in range(count):
        start = pos
        if pos + fixed > end:
            raise MalformedGitDataError("index truncated")
        mode = int.from_bytes(data[pos + 24 : pos + 28], "big")
        flags = int.from_bytes(data[pos + 40 + hash_size : pos + fixed], "big")
        pos += fixed
        extended = 0
        if flags & _FLAG_EXTENDED:
            if version < 3 or pos + 2 > end:
                raise MalformedGitDataError("extended flags outside index v3+")
            extended = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
        raw, pos = _entry_path(data, start, pos, end, version, previous)
        if flags & _NAME_MASK < _NAME_MASK and flags & _NAME_MASK != len(raw):
            raise MalformedGitDataError("index path length mismatch")
        if mode & _TYPE_MASK not in (_REGULAR, _SYMLINK, _GITLINK):
            raise MalformedGitDataError(f"unknown mode {mode:o} in index")
        entries.append(
            IndexEntry(
                path=_check_path(raw),
                mode=mode,
                sha=data[start + 40 : start + 40 + hash_size],
                stage=(flags & _STAGE_MASK) >> 12,
                skip_worktree=bool(extended & _EXT_SKIP_WORKTREE),
                intent_to_add=bool(extended & _EXT_INTENT_TO_ADD),
            )
        )
        previous = raw
    return entries


def blob_hash(content: bytes, algo: str = "sha1") -> bytes:
    """Git's object name for a blob of these bytes."""
    return hashlib.new(algo, b"blob %d\0" % len(content) + content).digest()


def _file_hash(path: Path, algo: str) -> bytes | None:
    """The blob hash of a regular file, streamed; None when it changed while being read."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest = hashlib.new(algo, b"blob %d\0" % size)
        read = 0
        while chunk := f.read(_CHUNK):
            read += len(chunk)
            digest.update(chunk)
    return digest.digest() if read == size else None


def _parent_is_symlink(root: Path, parts: list[str]) -> bool:
    here = root
    for part in parts[:-1]:
        here = here / part
        try:
            if here.is_symlink():
                return True
        except OSError:
            return False
    return False


def _entry_dirty(root: Path, entry: IndexEntry, algo: str) -> bool:
    parts = entry.path.split("/")
    if _parent_is_symlink(root, parts):
        return False  # never read through a link: outside the tree, and not what git tracks
    path = root.joinpath(*parts)
    try:
        info = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        # Absent from the tree is not dirty: runtime_env.yaml's excludes (or .gitignore) may
        # have left a tracked file out of the uploaded working dir.
        return False
    is_link = entry.mode & _TYPE_MASK == _SYMLINK
    if stat.S_ISLNK(info.st_mode):
        # A file replaced by a link, or a link retargeted. Its target is never followed.
        return not is_link or blob_hash(os.fsencode(path.readlink()), algo) != entry.sha
    if not stat.S_ISREG(info.st_mode):
        return True  # a directory, FIFO or device where a file is tracked: never opened
    # A tracked link that is a file here: Ray's zip follows links and ships the target's
    # content as a file, so there is nothing to compare. The exec bit is not compared (Ray's
    # unzip does not keep file modes), nor are clean filters (LFS, eol conversion) applied: a
    # file they rewrite reads as modified.
    return not is_link and _file_hash(path, algo) != entry.sha


def worktree_dirty(root: Path, entries: list[IndexEntry], algo: str = "sha1") -> bool:
    """Whether any tracked file in ``root`` differs from its index entry. Staged changes (index
    against HEAD's tree) cannot be seen without objects, so they do not count."""
    for entry in entries:
        if entry.stage or entry.intent_to_add:
            return True  # a merge conflict, or a file added with `git add -N`
        if entry.skip_worktree or entry.mode & _TYPE_MASK == _GITLINK:
            continue  # sparse checkout, submodule: nothing of this tree to compare
        if _entry_dirty(root, entry, algo):
            return True
    return False
