"""app.code_version against real repositories made with the git CLI, and runtime_env.yaml's
excludes run through Ray's own working-dir packaging: what a Ray Job's working dir carries."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.code_version import CodeVersion, code_version
from app.git_index import parse_index

REPO = Path(__file__).resolve().parents[2]
CANARY = "hunter2-token"
METADATA = ("HEAD", "index", "packed-refs", "refs")


@pytest.fixture(autouse=True)
def _no_image_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GIT_COMMIT", raising=False)
    monkeypatch.delenv("GIT_DIRTY", raising=False)
    monkeypatch.delenv("RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES", raising=False)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def make_repo(path: Path) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "app").mkdir()
    (path / "app" / "main.py").write_text("print('hello')\n")
    (path / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (path / "run.sh").chmod(0o755)
    (path / "README.md").write_text("a readme\n")
    (path / "link.py").symlink_to("app/main.py")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "first")
    # What must never travel: a credential in a remote URL.
    git(path, "remote", "add", "origin", f"https://user:{CANARY}@example.com/r.git")
    return path


def copy_metadata(src: Path, dest: Path) -> Path:
    """The tree plus only the metadata runtime_env.yaml ships (no objects, no config)."""
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    (dest / ".git").mkdir()
    for name in METADATA:
        found = src / ".git" / name
        if found.is_dir():
            shutil.copytree(found, dest / ".git" / name)
        elif found.exists():
            shutil.copy2(found, dest / ".git" / name)
    return dest


def ship(src: Path, dest: Path) -> set[str]:
    """The working dir as `ray job submit --runtime-env runtime_env.yaml --working-dir` packs
    it (Ray's default excludes, then the file's), unpacked into ``dest``; the zip's names."""
    from ray._private.runtime_env.packaging import create_package
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    spec = yaml.safe_load((REPO / "runtime_env.yaml").read_text())
    seen: dict[str, Any] = {}

    def capture(working_dir: str, excludes: list[str], is_file: bool = False) -> None:
        seen["excludes"] = excludes

    runtime_env = {"working_dir": str(src), "excludes": spec["excludes"]}
    upload_working_dir_if_needed(runtime_env, include_gitignore=True, upload_fn=capture)
    package = dest.parent / f"{dest.name}.zip"
    create_package(str(src), package, include_gitignore=True, excludes=seen["excludes"])
    with zipfile.ZipFile(package) as archive:
        archive.extractall(dest)
        names = set(archive.namelist())
        assert not any(CANARY.encode() in archive.read(n) for n in names if not n.endswith("/"))
    return names


def test_clean_checkout_uses_git(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    head = git(repo, "rev-parse", "HEAD")
    assert code_version(repo) == CodeVersion(head, False, "git")
    (repo / "README.md").write_text("changed\n")
    assert code_version(repo) == CodeVersion(head, True, "git")


def test_ray_packaging_ships_only_the_metadata(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "branch", "feature/x")
    git(repo, "tag", "v1")
    (repo / "sub").mkdir()
    git(repo / "sub", "init", "-q")  # a nested repository: none of it travels
    names = ship(repo, tmp_path / "shipped")
    from_git = {n for n in names if n.startswith(".git") or "/.git" in n}
    assert from_git == {
        ".git/HEAD",
        ".git/index",
        ".git/refs/heads/main",
        ".git/refs/heads/feature/x",
        ".git/refs/tags/v1",
    }
    assert {"app/main.py", "run.sh", "README.md", "link.py"} <= names

    git(repo, "pack-refs", "--all")
    names = ship(repo, tmp_path / "packed")
    assert {n for n in names if n.startswith(".git")} == {
        ".git/HEAD",
        ".git/index",
        ".git/packed-refs",
        ".git/refs/heads/",  # (empty directories)
        ".git/refs/tags/",
    }


def test_shipped_metadata_gives_commit_and_dirty_flag(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    head = git(repo, "rev-parse", "HEAD")
    shipped = tmp_path / "shipped"
    ship(repo, shipped)
    assert not (shipped / ".git" / "objects").exists()
    assert code_version(shipped) == CodeVersion(head, False, "git-metadata")
    # A tracked file left out of the upload is not a change.
    (shipped / "README.md").unlink()
    assert code_version(shipped).dirty is False
    (shipped / "app" / "main.py").write_text("print('changed')\n")
    assert code_version(shipped) == CodeVersion(head, True, "git-metadata")


def test_metadata_copy_with_symlinks_packed_refs_and_detached_head(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    head = git(repo, "rev-parse", "HEAD")
    git(repo, "pack-refs", "--all")
    assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    copy = copy_metadata(repo, tmp_path / "packed")
    assert code_version(copy) == CodeVersion(head, False, "git-metadata")
    (copy / "link.py").unlink()
    (copy / "link.py").symlink_to("run.sh")  # a link retargeted is a change
    assert code_version(copy).dirty is True

    (repo / "README.md").write_text("second\n")
    git(repo, "commit", "-qam", "second")
    second = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "--detach", "HEAD~1")
    copy = copy_metadata(repo, tmp_path / "detached")
    assert (copy / ".git" / "HEAD").read_text().strip() == head
    assert code_version(copy) == CodeVersion(head, False, "git-metadata")
    git(repo, "checkout", "-q", "main")
    assert code_version(copy_metadata(repo, tmp_path / "main")).commit == second


def _ls_files(repo: Path) -> list[tuple[int, str, int, str]]:
    rows = []
    for line in git(repo, "ls-files", "-s").splitlines():
        meta, path = line.split("\t", 1)
        mode, sha, stage = meta.split()
        rows.append((int(mode, 8), sha, int(stage), path))
    return rows


@pytest.mark.parametrize("version", [2, 3, 4])
def test_index_parser_matches_git_ls_files(tmp_path: Path, version: int) -> None:
    repo = make_repo(tmp_path / "repo")
    for i in range(5):  # shared prefixes, for v4's compression
        (repo / "app" / f"module_{i}_long_name.py").write_text(f"x = {i}\n")
    git(repo, "add", "-A")
    if version == 3:
        (repo / "later.py").write_text("y = 1\n")
        git(repo, "add", "-N", "later.py")  # intent-to-add: an extended flag, index v3
    git(repo, "update-index", "--index-version", str(version))
    data = (repo / ".git" / "index").read_bytes()
    assert int.from_bytes(data[4:8], "big") == version
    parsed = [(e.mode, e.sha.hex(), e.stage, e.path) for e in parse_index(data)]
    assert parsed == _ls_files(repo)
    if version == 3:
        assert [e.path for e in parse_index(data) if e.intent_to_add] == ["later.py"]
    copy = copy_metadata(repo, tmp_path / "copy")
    assert code_version(copy).dirty is (version == 3)  # `git add -N` shows in git status


@pytest.mark.parametrize(
    "damage",
    [
        lambda g: (g / "index").write_bytes(b"DIRC garbage"),
        lambda g: (g / "index").write_bytes((g / "index").read_bytes()[:-30]),
        lambda g: (g / "index").write_bytes(b"DIRC" + (g / "index").read_bytes()[4:-1] + b"x"),
        lambda g: (g / "HEAD").write_text("ref: refs/../../../etc/passwd\n"),
        lambda g: (g / "HEAD").write_text("nonsense\n"),
        lambda g: (g / "HEAD").write_text("ref: refs/heads/nowhere\n"),
        lambda g: (g / "HEAD").write_bytes(b"x" * 100_000),
    ],
)
def test_malformed_metadata_is_unknown_with_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Any
) -> None:
    copy = copy_metadata(make_repo(tmp_path / "repo"), tmp_path / "copy")
    damage(copy / ".git")
    assert code_version(copy) == CodeVersion("", None, "unknown")
    assert code_version(copy).source == "unknown"
    assert capsys.readouterr().err.count("warning: code version:") == 1


def test_links_out_of_the_metadata_are_never_followed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    head = git(repo, "rev-parse", "HEAD")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "main").write_text(f"{head}\n")
    copy = copy_metadata(repo, tmp_path / "copy")
    ref = copy / ".git" / "refs" / "heads" / "main"
    ref.unlink()
    ref.symlink_to(outside / "main")
    assert code_version(copy).source == "unknown"

    linked = tmp_path / "linked"
    shutil.copytree(repo, linked, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    (linked / ".git").symlink_to(copy / ".git")
    assert code_version(linked).source == "unknown"
    gitfile = tmp_path / "gitfile"
    shutil.copytree(repo, gitfile, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    (gitfile / ".git").write_text(f"gitdir: {copy / '.git'}\n")
    assert code_version(gitfile).source == "unknown"
    # A worktree's `gitdir:` file to a full repository is for git itself to follow.
    (gitfile / ".git").write_text(f"gitdir: {repo / '.git'}\n")
    assert code_version(gitfile).source == "git"


def test_image_env_wins_and_nothing_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path / "repo")
    assert code_version(tmp_path) == CodeVersion("", None, "unknown")
    monkeypatch.setenv("GIT_COMMIT", "ABC1234" + "0" * 33)
    monkeypatch.setenv("GIT_DIRTY", "true")
    assert code_version(repo) == CodeVersion("abc1234" + "0" * 33, True, "image")
    monkeypatch.setenv("GIT_DIRTY", "")
    assert code_version(repo).dirty is None


def test_tags() -> None:
    assert CodeVersion("a" * 40, False, "git-metadata").tags() == {
        "git_commit": "a" * 40,
        "git_dirty": "false",
        "git_source": "git-metadata",
        "mlflow.source.git.commit": "a" * 40,
    }
    assert CodeVersion("", None, "unknown").tags() == {
        "git_commit": "",
        "git_dirty": "unknown",
        "git_source": "unknown",
    }
