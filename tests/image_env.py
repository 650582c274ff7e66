"""An image's Python environment without Docker: a venv built by the image's own `pip install`
line, and a directory holding what its Dockerfile COPYs under its WORKDIR.

Docker cannot run here, but what breaks an image at start-up is mostly its Python environment (a
missing extra, a module not copied in). Building that environment from the Dockerfile's own text
catches it: edit the install line and the venv changes with it.

What is not reproduced: the base image's OS packages, and the install line's other shell
commands. ``--no-cache-dir`` is dropped (it only keeps pip's cache out of the image layer), so
builds reuse pip's cache; the venv itself is cached by the line and the files it reads.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "rayvision" / "image-envs"
COMPLETE = ".complete"


@dataclass(frozen=True)
class Dockerfile:
    base: str  # FROM
    args: dict[str, str]  # ARG defaults
    copies: dict[PurePosixPath, Path]  # destination in the image -> source in the repository
    workdir: PurePosixPath
    # The `pip install ...` commands of its RUN instructions, each with the WORKDIR it ran in.
    installs: list[tuple[str, PurePosixPath]]
    env: dict[str, str]  # ENV

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        text = re.sub(r"\\\n", " ", path.read_text())
        base = ""
        installs: list[tuple[str, PurePosixPath]] = []
        args: dict[str, str] = {}
        env: dict[str, str] = {}
        copies: dict[PurePosixPath, Path] = {}
        workdir = PurePosixPath("/")
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            instruction, _, rest = line.partition(" ")
            rest = _substitute(rest.strip(), args)
            match instruction.upper():
                case "FROM":
                    base = rest.split()[0]
                case "ARG":
                    name, _, default = rest.partition("=")
                    args[name] = default.strip('"')
                case "WORKDIR":
                    workdir = workdir / rest
                case "COPY":
                    *sources, destination = [w for w in shlex.split(rest) if not w.startswith("--")]
                    (source,) = sources
                    target = workdir / destination
                    if destination.endswith("/") and (REPO / source).is_file():
                        target = target / PurePosixPath(source).name  # COPY file dir/
                    copies[target] = REPO / source
                case "ENV":
                    env |= dict(word.split("=", 1) for word in shlex.split(rest))
                case "RUN":
                    commands = [c.strip() for c in rest.split("&&") if "pip install" in c]
                    installs += [(command, workdir) for command in commands]
        return cls(base, args, copies, workdir, installs, env)

    def python_version(self) -> str:
        """The Python of the base image: python:X.Y-* or a tag with -pyXY (rayproject/ray)."""
        if found := re.match(r"python:(\d+\.\d+)", self.base):
            return found.group(1)
        if found := re.search(r":[^:]*-py(\d)(\d+)\b", self.base):
            return f"{found.group(1)}.{found.group(2)}"
        raise ValueError(f"{self.base}: no Python version in the base image's name")


def _substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


@dataclass(frozen=True)
class ImageEnv:
    venv: Path
    workdir: Path  # the image's WORKDIR, holding what the Dockerfile copies there
    image_env: dict[str, str]  # its ENV, with its WORKDIR's path pointing at ``workdir``

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        """An environment whose `python` and `mlflow` are the image's, with its ENV."""
        path = f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        return {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), **self.image_env, **extra}


def _install_command(dockerfile: Dockerfile, pip: str) -> list[str]:
    words: list[str] = []
    for command, workdir in dockerfile.installs:
        # `pip install A B` (or `python -m pip install`): the arguments after `install`.
        arguments = shlex.split(command)
        arguments = arguments[arguments.index("install") + 1 :]
        for word in arguments:
            if word == "--no-cache-dir":
                continue
            copied = dockerfile.copies.get(workdir / word)
            words.append(str(copied) if copied else word)
    return [pip, "install", "--disable-pip-version-check", "--quiet", *words]


def build(dockerfile_path: Path, into: Path) -> ImageEnv:
    """The image's environment: its venv (cached under ``CACHE`` by install line and inputs) and
    its WORKDIR's copied files, laid out under ``into``."""
    dockerfile = Dockerfile.parse(dockerfile_path)
    if not dockerfile.installs:
        raise ValueError(f"{dockerfile_path}: no `pip install` line")
    python = shutil.which(f"python{dockerfile.python_version()}")
    if python is None:
        raise RuntimeError(f"python{dockerfile.python_version()} (the image's) is not installed")

    # The key: the line (with this checkout's paths left out, so every clone shares the cache)
    # and the contents of the files it reads.
    key = hashlib.sha256()
    command = _install_command(dockerfile, "pip")
    key.update(" ".join([python, *command]).replace(str(REPO), "").encode())
    for word in command:
        if Path(word).is_file():
            key.update(Path(word).read_bytes())
    venv = CACHE / f"{dockerfile_path.parent.name}-{dockerfile_path.stem}-{key.hexdigest()[:16]}"
    if not (venv / COMPLETE).exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip = str(venv / "bin" / "pip")
        print(f"building {venv.name} from {dockerfile_path.name}'s install line", file=sys.stderr)
        subprocess.run(_install_command(dockerfile, pip), check=True, timeout=900)
        (venv / COMPLETE).touch()

    root = into / "image"
    for destination, source in dockerfile.copies.items():
        if not destination.is_relative_to(dockerfile.workdir):
            continue
        target = root / destination.relative_to("/")
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    workdir = root / dockerfile.workdir.relative_to("/")
    workdir.mkdir(parents=True, exist_ok=True)
    image_env = {
        name: value.replace(str(dockerfile.workdir), str(workdir))
        for name, value in dockerfile.env.items()
    }
    return ImageEnv(venv, workdir, image_env)
