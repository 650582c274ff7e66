"""Helpers the tests share: ports, polling with a deadline, Ray Jobs over its REST API."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests

# One free_port for the launcher and the tests, re-exported here.
from cluster.mlflow.processes import free_port

__all__ = [
    "TERMINAL_JOB_STATES",
    "JobsApi",
    "free_port",
    "http_ok",
    "stop_process_group",
    "wait_for",
]

TERMINAL_JOB_STATES = {"SUCCEEDED", "FAILED", "STOPPED"}


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return requests.get(url, headers=headers, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def stop_process_group(process: subprocess.Popen[Any], timeout: float = 30) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)


class JobsApi:
    """Ray's job REST API on the dashboard, with the cluster's auth token."""

    def __init__(self, dashboard: str, token: str) -> None:
        self.base = f"{dashboard}/api/jobs/"
        self.headers = {"Authorization": f"Bearer {token}"}

    def info(self, submission_id: str) -> dict[str, Any]:
        response = requests.get(self.base + submission_id, headers=self.headers, timeout=10)
        response.raise_for_status()
        info: dict[str, Any] = response.json()
        return info

    def logs(self, submission_id: str) -> str:
        response = requests.get(
            f"{self.base}{submission_id}/logs", headers=self.headers, timeout=10
        )
        response.raise_for_status()
        return str(response.json()["logs"])

    def wait(self, submission_id: str, timeout: float) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            info = self.info(submission_id)
            return info if info["status"] in TERMINAL_JOB_STATES else None

        info: dict[str, Any] = wait_for(finished, timeout, f"job {submission_id}", interval=1)
        return info


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """A real S3 HTTP endpoint (moto's threaded server) on a free port: its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
