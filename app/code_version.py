"""Which code a run ran: the commit and whether the tree differed from it, as MLflow tags.

Resolved, first match wins:
1. ``GIT_COMMIT`` (and ``GIT_DIRTY``) in the environment: the cluster image's build args
   (cluster/docker/Dockerfile), whose code has no ``.git`` -> source ``image``.
2. A full checkout at or above the directory (``git rev-parse`` / ``git status``) -> ``git``.
3. The git metadata a Ray Job's working dir carries (runtime_env.yaml ships ``.git/HEAD``,
   ``refs/``, ``packed-refs`` and ``index``, no objects): HEAD followed through the refs, and the
   tree hashed against the index for the dirty flag -> ``git-metadata``.
4. Nothing -> ``CodeVersion("", None, "unknown")``.

A job's working dir is untrusted input: reads are bounded, nothing outside ``root/.git`` (and
the tracked files of ``root``) is read, no ``gitdir:`` file or symlink is followed, and bad data
gives ``unknown`` with a warning printed once, never an exception.
"""

from __future__ import annotations

import os
import re
import stat

# Only `git rev-parse` and `git status`, with fixed arguments.
import subprocess  # nosec B404
import sys
from dataclasses import dataclass
from pathlib import Path

from app.git_index import (
    MAX_INDEX_BYTES,
    MAX_SMALL_FILE_BYTES,
    MalformedGitDataError,
    parse_index,
    read_bounded,
    worktree_dirty,
)

GIT_TIMEOUT_S = 30
MAX_SYMREF_DEPTH = 5
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_IMAGE_SHA = re.compile(r"[0-9a-fA-F]{7,64}")
_REF = re.compile(r"refs/[A-Za-z0-9._/+@-]{1,250}")
_warned: set[str] = set()


@dataclass(frozen=True)
class CodeVersion:
    commit: str
    dirty: bool | None
    source: str  # "git", "git-metadata", "image" or "unknown"

    def tags(self) -> dict[str, str]:
        dirty = "unknown" if self.dirty is None else str(self.dirty).lower()
        tags = {"git_commit": self.commit, "git_dirty": dirty, "git_source": self.source}
        if self.commit:
            tags["mlflow.source.git.commit"] = self.commit
        return tags


UNKNOWN = CodeVersion("", None, "unknown")


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(f"warning: code version: {message}", file=sys.stderr, flush=True)


def _from_image() -> CodeVersion | None:
    commit = os.environ.get("GIT_COMMIT", "").strip()
    if not commit:
        return None
    if not _IMAGE_SHA.fullmatch(commit):
        _warn_once("GIT_COMMIT is not a hexadecimal commit; ignored")
        return None
    flag = os.environ.get("GIT_DIRTY", "").strip().lower()
    dirty = {"true": True, "1": True, "false": False, "0": False}.get(flag)
    return CodeVersion(commit.lower(), dirty, "image")


def _git(root: Path, *args: str) -> str | None:
    """``git ARGS`` in ``root``: its stdout, or None when git is missing or fails."""
    try:
        done = subprocess.run(  # noqa: S603  # nosec B603 B607
            ["git", *args],  # noqa: S607 - fixed arguments, no user input
            cwd=root,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=True,
            # Read-only: `git status` must not rewrite the index of a tree in use.
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout


def _from_git(root: Path) -> CodeVersion | None:
    out = _git(root, "rev-parse", "--show-toplevel", "HEAD")
    lines = (out or "").split()
    if len(lines) != 2 or not _SHA.fullmatch(lines[1]):
        return None
    top, commit = lines
    # With a .git of its own (say a job's metadata-only copy), root is its own tree: the commit
    # of some enclosing repository (a home directory's, say) is not this code's.
    if os.path.lexists(root / ".git") and Path(top).resolve() != root.resolve():
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return CodeVersion(commit, None if status is None else bool(status.strip()), "git")


def _plain(path: Path) -> bool:
    """A directory or file that is not a symlink (lstat: links are never followed)."""
    try:
        mode = path.lstat().st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode) or stat.S_ISREG(mode)


def _loose_ref(gitdir: Path, name: str) -> str | None:
    here = gitdir
    for part in name.split("/"):
        here = here / part
        if not _plain(here):
            return None
    return read_bounded(here, 4096).decode("ascii", "replace").strip()


def _packed_ref(gitdir: Path, name: str) -> str | None:
    packed = gitdir / "packed-refs"
    if not os.path.lexists(packed):
        return None
    for line in read_bounded(packed, MAX_SMALL_FILE_BYTES).decode("utf-8", "replace").splitlines():
        if line.startswith(("#", "^")) or not line.strip():
            continue
        sha, _, ref = line.partition(" ")
        if ref == name:
            return sha
    return None


def _resolve(gitdir: Path, head: str) -> str:
    """HEAD's text followed through symbolic refs to a commit id."""
    for _ in range(MAX_SYMREF_DEPTH):
        if _SHA.fullmatch(head):
            return head
        if not head.startswith("ref: "):
            break
        name = head.removeprefix("ref: ").strip()
        if not _REF.fullmatch(name) or ".." in name or "//" in name or name.endswith("/"):
            raise MalformedGitDataError(f"bad ref name {name[:80]!r}")
        found = _loose_ref(gitdir, name) or _packed_ref(gitdir, name)
        if found is None:
            raise MalformedGitDataError(f"ref {name} not found (no commit yet?)")
        head = found
    raise MalformedGitDataError("HEAD does not name a commit")


def _from_metadata(root: Path) -> CodeVersion | None:
    gitdir = root / ".git"
    if not os.path.lexists(gitdir):
        return None
    if gitdir.is_symlink() or not gitdir.is_dir():
        # A worktree's or submodule's `gitdir:` file points elsewhere: never followed.
        raise MalformedGitDataError(".git is not a directory of its own")
    head = read_bounded(gitdir / "HEAD", 4096).decode("ascii", "replace").strip()
    commit = _resolve(gitdir, head)
    index = gitdir / "index"
    if not os.path.lexists(index):
        return CodeVersion(commit, None, "git-metadata")
    hash_size, algo = (20, "sha1") if len(commit) == 40 else (32, "sha256")
    entries = parse_index(read_bounded(index, MAX_INDEX_BYTES), hash_size)
    return CodeVersion(commit, worktree_dirty(root, entries, algo), "git-metadata")


def _at(root: Path) -> CodeVersion | None:
    found = _from_git(root)
    if found is not None:
        return found
    try:
        return _from_metadata(root)
    except (MalformedGitDataError, OSError, ValueError) as error:
        _warn_once(f"unreadable git metadata in {root}: {error}")
        return UNKNOWN


def code_version(root: Path | None = None) -> CodeVersion:
    """The commit and dirty flag of the code at ``root``. By default the working directory,
    then the directory this package was imported from: a Tune trial runs in its own trial
    directory, while its code (``app/``) is still the job's uploaded working dir."""
    image = _from_image()
    if image is not None:
        return image
    roots = [root] if root is not None else [Path.cwd(), Path(__file__).resolve().parent.parent]
    for candidate in dict.fromkeys(roots):
        found = _at(candidate)
        if found is not None and found.source != "unknown":
            return found
    return UNKNOWN
