"""The server restarts under a logging run; the client's retries carry the run through."""

from __future__ import annotations

import secrets
import threading
import time

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from cluster.mlflow.launcher import start_server, stop_server
from cluster.mlflow.processes import is_running

from .conftest import Stack

pytestmark = pytest.mark.integration

BATCH = 10
BATCHES_AFTER_RESTART = 20
DEADLINE_S = 300.0


def test_run_survives_a_server_restart(
    stack: Stack,
    client: MlflowClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Retries 0, 2, 4, 8, 16, 32, 64 s apart (the defaults double that): a restart of the
    # server, schema check included, takes well under a minute.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    run_id = client.create_run(
        client.create_experiment(f"restart-{secrets.token_hex(3)}")
    ).info.run_id
    restarted = threading.Event()
    logged: list[int] = []
    errors: list[BaseException] = []

    def write() -> None:
        deadline = time.monotonic() + DEADLINE_S
        after = 0
        try:
            while after < BATCHES_AFTER_RESTART and time.monotonic() < deadline:
                start = len(logged)
                steps = range(start, start + BATCH)
                client.log_batch(run_id, metrics=[Metric("x", s, 1_000 + s, s) for s in steps])
                logged.extend(steps)
                after += restarted.is_set()
            client.set_terminated(run_id)
        except BaseException as error:  # surfaced by the assertions below
            errors.append(error)

    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + 60
    while len(logged) < 5 * BATCH and writer.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.is_alive() and len(logged) >= 5 * BATCH, errors

    old_pid = stack.state.server.pid if stack.state.server else None
    assert stop_server(stack.run_dir)
    steps_while_down = len(logged)
    start_server(stack.settings, stack.run_dir)
    restarted.set()
    writer.join(DEADLINE_S)

    assert not writer.is_alive() and not errors, errors
    # The writer hit the downtime and got through it by retrying.
    assert any(
        r.name.startswith("urllib3") and "Retrying" in r.getMessage() for r in caplog.records
    )
    assert stack.state.server is not None and stack.state.server.pid != old_pid
    assert is_running(stack.state.server)
    assert len(logged) >= steps_while_down + BATCHES_AFTER_RESTART * BATCH
    history = client.get_metric_history(run_id, "x")
    assert sorted(int(m.step) for m in history) == list(range(len(logged)))
    assert client.get_run(run_id).info.status == "FINISHED"
