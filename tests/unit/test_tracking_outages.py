"""Which tracking errors are an outage to wait out, and which are answers to raise at once."""

from __future__ import annotations

from typing import Any, cast

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    PERMISSION_DENIED,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)

from app import tracking


def _http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status}", response=response)


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (MlflowException("connection refused", error_code=INTERNAL_ERROR), True),
        (MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE), True),
        (MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST), False),
        (MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE), False),
        (MlflowException("no access", error_code=PERMISSION_DENIED), False),
        (requests.ConnectionError("refused"), True),
        (_http_error(503), True),
        (_http_error(404), False),
        (ConnectionRefusedError(), True),
        (ValueError("a bug"), False),
    ],
)
def test_outage_or_answer(error: Exception, outage: bool) -> None:
    assert tracking.is_outage(error) is outage


def test_an_answer_is_raised_at_once_not_retried() -> None:
    calls = []

    def missing_run() -> None:
        calls.append(1)
        raise MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST)

    with pytest.raises(MlflowException):
        tracking.retrying(missing_run, "reading a run", timeout_s=60)
    assert len(calls) == 1


def test_clients_are_patient_only_inside_outlasting_outages(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert type(tracking.client()).__name__ == "MlflowClient"
    with tracking.outlasting_outages(30):
        assert type(tracking.client()).__name__ == "_PatientClient"
        # A metric buffer must never wait: its flush reports failure and training goes on.
        assert type(tracking.MetricBuffer("run").client).__name__ == "MlflowClient"
    assert type(tracking.client()).__name__ == "MlflowClient"


class _Recorder:
    """Takes log_batch calls as a tracking server would."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []

    def log_batch(self, run_id: str, metrics: list[Any]) -> None:
        self.sent.extend((m.key, m.step) for m in metrics)


def test_a_restarted_attempt_does_not_log_again_what_the_run_holds() -> None:
    recorder = _Recorder()
    buffer = tracking.MetricBuffer("run", cast(Any, recorder), sent_through_step=20)
    buffer.log({"batch_loss": 1.0}, step=15)  # retrained after the lost attempt sent it
    buffer.log({"epoch": 2.0}, step=20)
    buffer.log({"test_accuracy": 0.9}, step=20, repeat=True)  # final scores always go
    buffer.log({"batch_loss": 0.5}, step=25)
    assert buffer.flush()
    assert recorder.sent == [("test_accuracy", 20), ("batch_loss", 25)]
