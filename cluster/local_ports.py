"""Ports and Ray clusters of the local targets (`make demo`, `ray-up`, `mlflow-ui`, `serve-up`).

python -m cluster.local_ports check RAY_PORT=6379 DASHBOARD_PORT=8265
    one line per taken port (what holds it, the variable that moves it); exit 1
python -m cluster.local_ports pick MLFLOW_PORT=5000 RAY_PORT=6379 ...
    stdout: VAR=PORT lines for `eval`; a taken default is replaced by a free port (said on
    stderr); a port the environment set is kept, or, taken, an error as with check
python -m cluster.local_ports record-ray 6379 results/ray/ray.json
    after `setsid ray start --head --port 6379`: the cluster's session id, for stop-ray
python -m cluster.local_ports stop-ray results/ray/ray.json
    end that cluster's processes only (`ray stop` ends every Ray cluster on the machine)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path

WHAT = {
    "RAY_PORT": "Ray GCS",
    "DASHBOARD_PORT": "Ray Dashboard",
    "RAY_CLIENT_PORT": "Ray Client server",
    "DASHBOARD_AGENT_PORT": "Ray dashboard agent",
    "MLFLOW_PORT": "MLflow",
    "SERVE_PORT": "Ray Serve HTTP",
    "HAPROXY_STATS_PORT": "HAProxy stats",
    "HAPROXY_METRICS_PORT": "HAProxy metrics",
}
PROC = Path("/proc")


class PortError(RuntimeError):
    """A port asked for is taken, or a cluster cannot be recorded or found."""


def is_free(port: int) -> bool:
    """Nothing listens on ``port`` on any address (a server binding 0.0.0.0 would fail)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            # Bound, never listened on: a test of the address, not a server.
            sock.bind(("0.0.0.0", port))  # noqa: S104  # nosec B104
        except OSError:
            return False
    return True


def free_port(avoid: Collection[int] = ()) -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in avoid and is_free(port):
            return port


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (PROC / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def holder(port: int) -> str | None:
    """``name (pid N)`` of the process listening on ``port``, when /proc lets us see it."""
    links = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    for pid in (p for p in PROC.iterdir() if p.name.isdigit()):
        with contextlib.suppress(OSError):
            for fd in (pid / "fd").iterdir():
                if str(fd.readlink()) in links:
                    return f"{(pid / 'comm').read_text().strip()} (pid {pid.name})"
    return None


def taken_message(var: str, port: int, avoid: set[int]) -> str:
    by = holder(port)
    return (
        f"error: port {port} ({WHAT.get(var, var)}) is taken{f' by {by}' if by else ''}; "
        f"choose another with {var}=PORT, e.g. {var}={free_port(avoid)}"
    )


def _parse(specs: Sequence[str]) -> list[tuple[str, int]]:
    pairs = []
    for spec in specs:
        var, _, port = spec.partition("=")
        if not port.isdigit():
            raise PortError(f"error: {spec!r} is not VAR=PORT")
        pairs.append((var, int(port)))
    return pairs


def check(specs: Sequence[str]) -> list[str]:
    """One error line per taken port."""
    pairs = _parse(specs)
    avoid = {port for _, port in pairs}
    return [taken_message(var, port, avoid) for var, port in pairs if not is_free(port)]


def pick(specs: Sequence[str], env: dict[str, str]) -> tuple[dict[str, int], list[str]]:
    """(VAR -> port, notes): each default that is taken moved to a free port. A port set in
    ``env`` is the user's choice: taken, it raises ``PortError`` instead."""
    pairs = _parse(specs)
    chosen: dict[str, int] = {}
    notes = []
    avoid = {port for _, port in pairs}
    for var, port in pairs:
        if is_free(port) and port not in chosen.values():
            chosen[var] = port
        elif var in env:
            raise PortError(taken_message(var, port, avoid))
        else:
            new = free_port(avoid | set(chosen.values()))
            by = holder(port)
            notes.append(
                f"port {port} ({WHAT.get(var, var)}) is taken{f' by {by}' if by else ''}: "
                f"using {new} (set {var} to choose)"
            )
            chosen[var] = new
        avoid.add(chosen[var])
    return chosen, notes


def _stat(pid: Path) -> tuple[str, int] | None:
    """(state, session id) of a process; None once it is gone."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = (pid / "stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[3])
    return None


def _listener_pid(port: int) -> int | None:
    found = holder(port)
    return int(found.rsplit("pid ", 1)[1].rstrip(")")) if found else None


def record_ray(gcs_port: int, out: Path) -> dict[str, object]:
    """The session of the GCS server listening on ``gcs_port``: its whole cluster, once
    ``ray start`` ran under ``setsid`` (every process Ray starts keeps the session id)."""
    pid = _listener_pid(gcs_port)
    stat = _stat(PROC / str(pid)) if pid else None
    if pid is None or stat is None:
        raise PortError(f"error: no Ray GCS server listens on port {gcs_port}")
    sid = stat[1]
    if sid in (os.getsid(0), 0, 1):
        raise PortError(
            f"error: the Ray cluster on port {gcs_port} shares this shell's session; "
            "start it under setsid to stop it alone"
        )
    record = {"gcs_address": f"127.0.0.1:{gcs_port}", "gcs_pid": pid, "sid": sid}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record) + "\n")
    return record


def _members(sid: int) -> list[int]:
    """Live processes of session ``sid`` that are Ray's (its binaries, workers, HAProxy): a
    session id left by processes that all ended may be reused by an unrelated session."""
    own = []
    for pid in (p for p in PROC.iterdir() if p.name.isdigit()):
        stat = _stat(pid)
        if stat is None or stat[1] != sid or stat[0] == "Z":
            continue
        with contextlib.suppress(OSError):
            cmdline = (pid / "cmdline").read_bytes().lower()
            if b"ray" in cmdline or b"haproxy" in cmdline:
                own.append(int(pid.name))
    return own


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _gone(sid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _members(sid):
            return True
        time.sleep(0.2)
    return not _members(sid)


def stop_ray(record_file: Path, grace_s: float = 15) -> int:
    """End the processes of the recorded cluster (TERM, then KILL past ``grace_s``); return how
    many there were. The record is removed once they are gone."""
    record = json.loads(record_file.read_text())
    sid = int(record["sid"])
    members = _members(sid)
    _signal_all(members, signal.SIGTERM)
    if not _gone(sid, grace_s):
        _signal_all(_members(sid), signal.SIGKILL)
        if not _gone(sid, 10):
            raise PortError(f"error: Ray processes {_members(sid)} did not stop")
    record_file.unlink()
    return len(members)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command, rest = (args[0], args[1:]) if args else ("", [])
    try:
        if command == "check":
            errors = check(rest)
            for line in errors:
                print(line, file=sys.stderr)
            return 1 if errors else 0
        if command == "pick":
            chosen, notes = pick(rest, dict(os.environ))
            for note in notes:
                print(note, file=sys.stderr)
            print("\n".join(f"{var}={port}" for var, port in chosen.items()))
            return 0
        if command == "record-ray" and len(rest) == 2:
            record_ray(int(rest[0]), Path(rest[1]))
            return 0
        if command == "stop-ray" and len(rest) == 1:
            record = json.loads(Path(rest[0]).read_text())
            count = stop_ray(Path(rest[0]))
            print(f"stopped the Ray cluster at {record['gcs_address']} ({count} processes)")
            return 0
    except PortError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
