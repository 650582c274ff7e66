"""A laptop's cluster keeps Serve private: HAProxy's files in a folder of this user's alone (made
here, refused when someone else could have prepared it), its stats page and metrics on
127.0.0.1 (serve/haproxy-front.sh, checked with the HAProxy that ray[serve] bundles on the
config Ray 2.60 renders). On every cluster, the same wrapper drops Serve's client-settable control
headers and cuts off clients that trickle their headers. No Ray cluster: HAProxy runs on its own
in front of a small HTTP server that records what reaches it."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import requests
from ray.serve._private.haproxy import BackendConfig, HAProxyApi, HAProxyConfig, ServerConfig
from ray.serve.config import HTTPOptions

from serve.laptop_env import (
    LaptopEnvError,
    laptop_haproxy_env,
    main,
    private_folder,
)
from serve.throughput import FRONT_HAPROXY
from tests.support import http_ok, stop_process_group, wait_for

LOOPBACK = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary folder with a path short enough for HAProxy's sockets."""
    with tempfile.TemporaryDirectory(prefix="rv", dir="/tmp") as folder:
        yield Path(folder)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_the_folder_is_created_private(short_tmp: Path) -> None:
    folder = private_folder(short_tmp / "hp")
    assert folder.is_dir() and mode(folder) == 0o700


def test_an_existing_folder_of_ours_is_narrowed_to_0700(short_tmp: Path) -> None:
    (short_tmp / "hp").mkdir(mode=0o755)
    assert mode(private_folder(short_tmp / "hp")) == 0o700


@pytest.mark.parametrize("writable", [0o770, 0o707, 0o777])
def test_a_folder_others_may_write_to_is_refused_untouched(short_tmp: Path, writable: int) -> None:
    folder = short_tmp / "hp"
    folder.mkdir()
    folder.chmod(writable)
    with pytest.raises(LaptopEnvError, match="writable by its group or others"):
        private_folder(folder)
    assert mode(folder) == writable


def test_someone_elses_folder_is_refused(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = short_tmp / "hp"
    folder.mkdir(mode=0o700)
    owner = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: owner + 1)  # the folder is now another user's
    with pytest.raises(LaptopEnvError, match=f"belongs to uid {owner}, not to you"):
        private_folder(folder)


def test_a_link_or_a_file_is_refused(short_tmp: Path) -> None:
    target = private_folder(short_tmp / "mine")
    (short_tmp / "link").symlink_to(target)
    with pytest.raises(LaptopEnvError, match="not a folder"):
        private_folder(short_tmp / "link")
    (short_tmp / "file").write_text("")
    with pytest.raises(LaptopEnvError, match="not a folder"):
        private_folder(short_tmp / "file")


def test_a_folder_too_long_for_haproxys_sockets_is_refused(short_tmp: Path) -> None:
    with pytest.raises(LaptopEnvError, match="longer than 29 characters"):
        private_folder(short_tmp / ("x" * 20))


def test_the_environment_puts_every_haproxy_file_in_the_folder(short_tmp: Path) -> None:
    folder = short_tmp / "hp"
    env = laptop_haproxy_env(folder, {})
    assert mode(folder) == 0o700
    paths = {k: v for k, v in env.items() if k.endswith(("_LOC", "_PATH", "_BASE", "_FILE"))}
    assert paths.pop("RAY_SERVE_HAPROXY_BINARY_PATH") == str(FRONT_HAPROXY)
    assert len(paths) == 5 and all(Path(p).is_relative_to(folder) for p in paths.values())
    assert (env["RAY_SERVE_HAPROXY_STATS_PORT"], env["RAY_SERVE_HAPROXY_METRICS_PORT"]) == (
        "8404",
        "9101",
    )
    assert os.access(env["RAYVISION_HAPROXY_BINARY"], os.X_OK)
    assert env["RAYVISION_HAPROXY_LOOPBACK"] == "1"
    with pytest.raises(LaptopEnvError, match="names the front wrapper"):
        laptop_haproxy_env(folder, {"RAYVISION_HAPROXY_BINARY": str(FRONT_HAPROXY)})


def test_the_command_prints_exports_or_a_clear_error(
    short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = short_tmp / "my dir"
    assert main(["--dir", str(folder)]) == 0
    exports = capsys.readouterr().out
    shell = subprocess.run(
        ["bash", "-c", f'{exports}\nprintf %s "$RAY_SERVE_HAPROXY_SOCKET_PATH"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout == f"{folder}/admin.sock"
    folder.chmod(0o777)
    assert main(["--dir", str(folder)]) == 1
    assert "error:" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port`` (hex, as /proc writes them)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            address, state = line.split()[1], line.split()[3]
            host, hex_port = address.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(host)
    return found


def ray_haproxy_config(
    folder: Path, stats: int, metrics: int, port: int = 0, backend: int = 0
) -> Path:
    """The config Ray 2.60's HAProxy manager writes for a laptop's Serve (127.0.0.1) on ``port``,
    with one application at ``/`` whose replica listens on ``backend`` (none when 0)."""
    backends = {}
    if backend:
        server = ServerConfig(name="replica", host="127.0.0.1", port=backend)
        backends["app"] = BackendConfig(
            name="app", path_prefix="/", app_name="app", servers=[server]
        )
    config = HAProxyConfig(
        http_options=HTTPOptions(host="127.0.0.1", port=port or free_port()),
        stats_port=stats,
        metrics_port=metrics,
        socket_path=str(folder / "admin.sock"),
        server_state_base=str(folder),
        server_state_file=str(folder / "server-state"),
        metrics_socket_path=str(folder / "metrics.sock"),
    )
    api = HAProxyApi(
        cfg=config, config_file_path=str(folder / "haproxy.cfg"), backend_configs=backends
    )
    api._generate_config_file_internal()
    return folder / "haproxy.cfg"


@pytest.mark.skipif(sys.platform != "linux", reason="Ray's HAProxy mode runs on Linux")
def test_haproxy_serves_stats_and_metrics_on_loopback_only(short_tmp: Path) -> None:
    stats, metrics = free_port(), free_port()
    env = laptop_haproxy_env(short_tmp / "hp", {})
    folder = Path(env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
    config = ray_haproxy_config(folder, stats, metrics)
    rendered = config.read_text()
    # What Ray binds without the wrapper: every interface.
    assert f"bind *:{stats}\n" in rendered and f"bind :{metrics}\n" in rendered
    env |= {
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
    }
    haproxy = subprocess.Popen(
        [env["RAY_SERVE_HAPROXY_BINARY_PATH"], "-db", "-f", str(config)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{stats}/stats"), 30, "HAProxy's stats")
        assert http_ok(f"http://127.0.0.1:{metrics}/metrics")
        assert listening_addresses(stats) == listening_addresses(metrics) == {LOOPBACK}
        assert (folder / "admin.sock").is_socket() and mode(folder) == 0o700
    finally:
        stop_process_group(haproxy)


def test_without_a_config_the_wrapper_runs_haproxy_unchanged(short_tmp: Path) -> None:
    env = laptop_haproxy_env(short_tmp / "hp", {})
    run = subprocess.run(
        [str(FRONT_HAPROXY), "-v"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.startswith("HAProxy version")


class RecordingReplica(BaseHTTPRequestHandler):
    """A stand-in for an ingress replica's HTTP server: answers 200 and records the headers of
    every request but Ray's health checks."""

    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        if self.path != "/-/healthz":
            self.seen.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        """Quiet."""


@contextlib.contextmanager
def front_haproxy(short_tmp: Path, replica_port: int) -> Iterator[int]:
    """HAProxy through the front wrapper (a cluster's: no loopback edits) on Ray's config for
    one application whose replica listens on ``replica_port``; yields HAProxy's port once it
    answers."""
    folder = private_folder(short_tmp / "hp")
    port = free_port()
    config = ray_haproxy_config(folder, free_port(), free_port(), port, replica_port)
    env = {
        **os.environ,
        "RAYVISION_PYTHON": sys.executable,
        "RAYVISION_HAPROXY_TIMEOUT_HTTP_REQUEST_S": "1",
    }
    env.pop("RAYVISION_HAPROXY_BINARY", None)  # found as on the cluster: ray[serve]'s own
    haproxy = subprocess.Popen(
        [str(FRONT_HAPROXY), "-db", "-f", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/x"), 30, "HAProxy")
        yield port
    finally:
        stop_process_group(haproxy)


def answers(url: str) -> bool:
    try:
        requests.get(url, timeout=2)
    except requests.RequestException:
        return False
    return True


@pytest.fixture
def front(short_tmp: Path) -> Iterator[int]:
    """``front_haproxy`` in front of a ``RecordingReplica``, once HAProxy reaches it."""
    replica = ThreadingHTTPServer(("127.0.0.1", 0), RecordingReplica)
    RecordingReplica.seen = []
    threading.Thread(target=replica.serve_forever, daemon=True).start()
    try:
        with front_haproxy(short_tmp, replica.server_port) as port:
            wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/x"), 30, "the replica")
            yield port
    finally:
        replica.shutdown()


def test_the_front_drops_the_headers_that_turn_serves_timeouts_off(front: int) -> None:
    sent = {
        "x-request-timeout-seconds": "0",  # Ray: "disable the timeout"
        "x-request-disconnect-disabled": "?1",  # Ray: keep running after the client left
        "x-request-id": "kept",
    }
    assert requests.get(f"http://127.0.0.1:{front}/predict", headers=sent, timeout=10).ok
    reached = RecordingReplica.seen[-1]
    assert reached["x-request-id"] == "kept"
    assert "x-request-timeout-seconds" not in reached
    assert "x-request-disconnect-disabled" not in reached


def test_the_front_cuts_off_a_client_that_trickles_its_headers(front: int) -> None:
    with socket.create_connection(("127.0.0.1", front), timeout=30) as client:
        client.sendall(b"GET /predict HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        answer = client.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert all(seen.get("host") != "x" for seen in RecordingReplica.seen)


def test_the_front_answers_503_with_retry_after_when_no_replica_can(short_tmp: Path) -> None:
    with front_haproxy(short_tmp, free_port()) as port:  # nothing listens on the replica's port
        response = requests.get(f"http://127.0.0.1:{port}/predict", timeout=10)
    assert response.status_code == 503, response.text  # Ray's config: 500
    assert response.headers["Retry-After"] == "1"
    assert response.json() == {
        "error": "unavailable",
        "status": 503,
        "detail": "no replica could answer; retry shortly",
    }
