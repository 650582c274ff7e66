"""The integration tests' tracking server that can go away: an outage, for real."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import tracking
from tests.conftest import BIN
from tests.support import free_port, http_ok, stop_process_group, wait_for


class StoppableMlflowServer:
    """An MLflow server on a fixed port and store that can go away and come back."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.root / "server.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--serve-artifacts",
                "--artifacts-destination",
                str(self.root / "artifacts"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_for(lambda: http_ok(f"{self.uri}/health"), 180, "the MLflow server's /health")

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)
            self.process = None
        wait_for(lambda: not http_ok(f"{self.uri}/health"), 30, "the MLflow server to stop")


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StoppableMlflowServer]:
    # No client retries: every send during the outage fails at once, as one does after an outage
    # longer than the client's retry window.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    running = StoppableMlflowServer(tmp_path)
    running.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", running.uri)
    tracking.configure()
    try:
        yield running
    finally:
        running.stop()
