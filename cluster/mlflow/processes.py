"""Process supervision for the launcher: free ports, background processes in their own process
group with output to a log, readiness polled with a deadline, and a stop that only ever signals
the process it started (a pid is checked against its start time before any signal)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import requests
from pydantic import BaseModel

from cluster.mlflow.settings import LauncherError

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.25


class ProcessRecord(BaseModel):
    pid: int
    # `ps -o lstart`: tells our process from a later one that reused its pid.
    started: str


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def answers(url: str) -> bool:
    """True when ``url`` answers 200."""
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def tail(log: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def _start_time(pid: int) -> str | None:
    done = subprocess.run(  # noqa: S603 - fixed arguments
        ["ps", "-o", "lstart=", "-p", str(pid)],  # noqa: S607 - ps from PATH, as on any POSIX
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or None


def spawn(command: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own process group and in the log's directory (the run dir, so
    that any stray file lands there), output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 - our interpreter, arguments built here
            command,
            env=dict(env),
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def record(proc: subprocess.Popen[bytes]) -> ProcessRecord:
    return ProcessRecord(pid=proc.pid, started=_start_time(proc.pid) or "")


def _group_alive(pgid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)  # reap our own child, or a zombie would look alive
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def is_running(record: ProcessRecord | None) -> bool:
    return (
        record is not None
        and _group_alive(record.pid)
        and _start_time(record.pid) in (record.started, None)
    )


def stop(record: ProcessRecord | None) -> bool:
    """Stop the process group ``record`` started (TERM, then KILL); False if already gone."""
    if record is None or not is_running(record):
        return False
    for sig, timeout in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _group_alive(record.pid):
                return True
            time.sleep(POLL_INTERVAL_S)
    raise LauncherError(f"process group {record.pid} survived SIGKILL")


def wait_until(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path
) -> None:
    """Poll ``ready`` until true; fail with the log's tail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if proc.poll() is not None:
            raise LauncherError(
                f"{what} exited with status {proc.returncode} before it was ready:\n{tail(log)}"
            )
        if time.monotonic() > deadline:
            raise LauncherError(f"{what} not ready after {START_TIMEOUT_S:.0f} s:\n{tail(log)}")
        time.sleep(POLL_INTERVAL_S)
