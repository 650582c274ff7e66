"""`make demo` as a newcomer runs it: a fresh clone of this repository, the default ports of
the demo taken (Redis's 6379 here; 5000 and 8265 by this test), another Ray cluster on the
machine. The demo picks free ports and prints their URLs, they answer, the served model
classifies, the console shows each epoch once without Ray's and MLflow's chatter, and
`make demo-down` ends what the demo started and nothing else.

The clone is of the repository this file lives in (DEMO_CLONE_FROM names another, e.g. a
scratch commit of a working tree)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from serve.client import ServeClient, sample_digit
from tests.cluster.local_ray import LocalRayCluster
from tests.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
DEFAULT_PORTS = (6379, 5000, 8265)
DEMO_TIMEOUT_S = 1500


@pytest.fixture
def taken_defaults() -> Iterator[set[int]]:
    """Each of the demo's default ports that is free, taken here for the test's length."""
    with contextlib.ExitStack() as stack:
        held = set()
        for port in DEFAULT_PORTS:
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # already taken (Redis on 6379 here)
            sock.listen()
            held.add(port)
        yield held


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    source = os.environ.get("DEMO_CLONE_FROM", str(REPO))
    dest = tmp_path / "rayvision"
    subprocess.run(["git", "clone", "--quiet", source, str(dest)], check=True, timeout=120)
    # This test's venv, not a fresh install: the lock's stamp is in it, and the clone's lock
    # files are made older than the stamp so that make does not reinstall.
    (dest / ".venv").symlink_to(VENV)
    for name in ("requirements-dev.lock", "pyproject.toml"):
        os.utime(dest / name, (0, 0))
    return dest


@pytest.fixture
def other_cluster(tmp_path: Path) -> Iterator[LocalRayCluster]:
    cluster = LocalRayCluster(tmp_path / "other-ray", head_cpus=1)
    cluster.root.mkdir()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    for name in ("DASHBOARD_PORT", "SERVE_PORT", "SERVE_URL", "PY", "VENV", "VERBOSE"):
        env.pop(name, None)
    return env


def _session_members(sid: int) -> list[int]:
    members = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                members.append(int(proc.name))
    return members


def _processes_naming(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError, IndexError):
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z" and marker.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return found


def _url(output: str, label: str) -> str:
    match = re.search(rf"^  {label}\s+(http://127\.0\.0\.1:\d+)", output, re.MULTILINE)
    assert match, f"no {label} URL in the demo's output:\n{output[-3000:]}"
    return match.group(1)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])


@pytest.mark.timeout(DEMO_TIMEOUT_S + 300)
def test_demo_from_a_fresh_clone_with_default_ports_taken(
    clone: Path, taken_defaults: set[int], other_cluster: LocalRayCluster
) -> None:
    env = _demo_env()
    record: dict[str, Any] = {}
    try:
        demo = subprocess.run(
            ["make", "demo"],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=DEMO_TIMEOUT_S,
            check=False,
        )
        output = demo.stdout + demo.stderr
        assert demo.returncode == 0, output[-5000:]
        record = json.loads((clone / "results" / "demo" / "ray.json").read_text())

        # Free ports chosen for taken defaults, each said once, and the URLs printed answer.
        mlflow_url, dashboard = _url(output, "MLflow UI"), _url(output, "Ray Dashboard")
        serve_url = _url(output, "Serve API docs")
        assert {_port(mlflow_url), _port(dashboard)}.isdisjoint(DEFAULT_PORTS)
        assert _port(record["gcs_address"]) != 6379
        for port, what in ((5000, "MLflow"), (8265, "Ray Dashboard"), (6379, "Ray GCS")):
            assert f"port {port} ({what}) is taken" in output
        assert requests.get(f"{mlflow_url}/health", timeout=10).status_code == 200
        assert requests.get(f"{dashboard}/api/version", timeout=10).status_code < 500
        assert requests.get(f"{serve_url}/docs", timeout=10).status_code == 200
        image, label = sample_digit(0)
        assert ServeClient(serve_url).predict(image)["label"] == label

        # A console worth reading: each epoch line once, none of the chatter.
        epoch_lines = [line for line in output.splitlines() if re.search(r"epoch \d+/5 ", line)]
        assert epoch_lines, output[-3000:]
        repeated = [line for line, count in Counter(epoch_lines).items() if count > 1]
        assert not repeated, repeated
        for chatter in (
            "PreemptionWatcher",
            "Checkpoint successfully created",
            "Reporting training result",
            "UserWarning",
            "Traceback",
        ):
            assert chatter not in output, chatter
    finally:
        down = subprocess.run(
            ["make", "demo-down"],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    assert down.returncode == 0, down.stdout + down.stderr
    # Nothing of the demo is left: its cluster's session, its MLflow server, its serve run.
    assert record, "the demo recorded no cluster"
    wait_for(lambda: not _session_members(record["sid"]), 30, "the demo's Ray processes to end")
    wait_for(lambda: not _processes_naming(str(clone)), 30, "the demo's processes to end")
    # The other cluster on the machine runs on.
    assert other_cluster.process is not None and other_cluster.process.poll() is None
    # It answers (401: token auth, and this test holds no token).
    answer = requests.get(f"{other_cluster.dashboard_url}/api/version", timeout=10)
    assert answer.status_code in (200, 401)
