"""Which tracking errors are an outage to wait out, and which are answers to raise at once."""

from __future__ import annotations

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
