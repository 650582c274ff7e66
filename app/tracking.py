"""MLflow tracking: where runs go, creating them, batched metric logging that survives an
outage of the tracking server. Models, the registry and aliases: ``app.model_registry``.

Location: ``MLFLOW_TRACKING_URI``; with none set, a SQLite database (registry included) at
``./mlflow.db`` with artifacts in ``./mlartifacts``, resolved to absolute paths so Ray workers
with another working directory write to the same place.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import mlflow
import requests
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

T = TypeVar("T")
DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
# MLflow's REST limits per log_batch request.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
# While the tracking server is unreachable, metrics wait in memory up to this many (about
# 100 bytes each); the oldest go first past it.
MAX_PENDING_METRICS = 100_000
DRAIN_TIMEOUT_S = 600.0  # at the end of a run, how long to keep trying to send what is queued
# What Ray workers and Ray Jobs (cluster/mlflow/runtime_env.py) need to reach the driver's MLflow.
FORWARDED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD",
    "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD",
)


def tracking_uri() -> str:
    """The tracking URI every job uses, absolute for local stores."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        return f"sqlite:///{Path.cwd() / DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def configure() -> str:
    """Point this process's MLflow client at the tracking URI; return it."""
    uri = tracking_uri()
    # Only the tracking URI: the registry follows it. A process-wide registry URI would also
    # redirect every other MlflowClient in the process that names only its tracking server.
    mlflow.set_tracking_uri(uri)
    return uri


def worker_env() -> dict[str, str]:
    """MLflow settings for Ray workers (the tracking URI made absolute)."""
    env = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    env["MLFLOW_TRACKING_URI"] = tracking_uri()
    return env


# How long this process's tracking calls wait out an unreachable server (outlasting_outages).
_patience_s = [0.0]


@contextlib.contextmanager
def outlasting_outages(seconds: float = DRAIN_TIMEOUT_S) -> Iterator[None]:
    """Within it, ``client()`` in this process outlasts a tracking outage of up to ``seconds``:
    for the drivers of long jobs (a training, a sweep), whose hours of work a restarting
    tracking server must not cost. Elsewhere (interactive commands) calls keep failing fast."""
    earlier = _patience_s[0]
    _patience_s[0] = seconds  # process-wide, like mlflow.set_tracking_uri
    try:
        yield
    finally:
        _patience_s[0] = earlier


def client(patient: bool = True) -> MlflowClient:
    """A client on the tracking URI; one that waits out outages when ``patient`` and the process
    is inside ``outlasting_outages``."""
    uri = configure()
    plain = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if patient and _patience_s[0] > 0:
        return cast("MlflowClient", _PatientClient(plain, _patience_s[0]))
    return plain


def ensure_experiment(name: str) -> str:
    """The experiment's id, creating it when missing. For a local SQLite store the artifacts go
    next to the database, not under whatever directory the creating process ran in."""
    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    uri = tracking_uri()
    location = None
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        location = (db.parent / DEFAULT_ARTIFACTS).as_uri()
    try:
        return str(mlflow_client.create_experiment(name, artifact_location=location))
    except mlflow.exceptions.MlflowException:
        # Another process (a concurrent trial) created it between our lookup and create.
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = "" if value is None else str(value)
    return flat


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def start_run(
    experiment: str,
    run_name: str | None,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
) -> str:
    """Create a run with its params and tags in a few batched requests; return its id."""
    mlflow_client = client()
    all_tags = {k: v for k, v in tags.items() if v is not None}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = mlflow_client.create_run(ensure_experiment(experiment), run_name=run_name, tags=all_tags)
    param_list = [Param(k, v[:6000]) for k, v in flatten(params).items()]
    for chunk in _chunks(param_list, MAX_PARAMS_PER_BATCH):
        mlflow_client.log_batch(run.info.run_id, params=chunk)
    return str(run.info.run_id)


class TrackingUnavailableError(RuntimeError):
    """The tracking server stayed unreachable for longer than the caller could wait."""


# What MLflow's client reports for a server that does not answer (connection refused, a 5xx
# while it restarts, throttling). Any other error code is an answer: a missing run, a bad value.
OUTAGE_ERROR_CODES = frozenset(
    {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}
)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the tracking server is away, rather than that the request was wrong."""
    if isinstance(exc, MlflowException):
        return exc.error_code in OUTAGE_ERROR_CODES
    if isinstance(exc, requests.HTTPError):
        return exc.response is None or exc.response.status_code >= 500
    return isinstance(exc, requests.RequestException | ConnectionError | TimeoutError)


def retrying(action: Callable[[], T], what: str, timeout_s: float = DRAIN_TIMEOUT_S) -> T:
    """``action()``, tried again every few seconds while the tracking server is away, for up to
    ``timeout_s`` (on top of the MLflow client's own retries): the end of a run outlasts a
    tracking outage. Errors that are answers (``is_outage`` false) raise at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return action()
        except Exception as exc:
            if not is_outage(exc) or time.monotonic() + 5 > deadline:
                raise
            print(f"{what} failed ({type(exc).__name__}); trying again", flush=True)
            time.sleep(5)  # a back-off between tries of an unreachable server


class _PatientClient:
    """An MlflowClient whose every call goes through ``retrying``."""

    def __init__(self, plain: MlflowClient, patience_s: float) -> None:
        self._plain = plain
        self._patience_s = patience_s

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._plain, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            return retrying(lambda: attribute(*args, **kwargs), f"MLflow {name}", self._patience_s)

        return call


class MetricBuffer:
    """Collects metrics and sends them with ``log_batch``: one request per flush, not one per
    metric, so logging every N batches costs training nothing measurable.

    A send that fails (the tracking server unreachable beyond the client's own retries) loses
    nothing and raises nothing: the unsent metrics go back to the front of the queue for the
    next flush. The queue is bounded (``max_pending``): past it the oldest are dropped and
    counted in ``dropped``, so a long outage costs memory no more than that."""

    def __init__(
        self,
        run_id: str,
        mlflow_client: MlflowClient | None = None,
        max_pending: int = MAX_PENDING_METRICS,
        sent_through_step: int = -1,
    ) -> None:
        self.run_id = run_id
        # Steps an earlier attempt of the run already sent (``last_logged_step``): a worker lost
        # after its epoch's flush but before its checkpoint counted repeats that epoch.
        self.sent_through_step = sent_through_step
        # Not a patient client: a flush that fails must return at once, training goes on.
        self.client = mlflow_client or client(patient=False)
        self.pending: list[Metric] = []
        self.max_pending = max_pending
        self.dropped = 0
        self.failed_sends = 0

    def log(self, metrics: Mapping[str, float], step: int, *, repeat: bool = False) -> None:
        """Queue ``metrics`` at ``step``; a step an earlier attempt sent is skipped, unless
        ``repeat`` (a run's final scores, which no finished attempt left behind)."""
        if step <= self.sent_through_step and not repeat:
            return  # logged once already, by the attempt that first trained this step
        now = int(time.time() * 1000)
        self.pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if len(self.pending) >= MAX_METRICS_PER_BATCH and not self.failed_sends:
            self.flush()
        self._bound()

    def flush(self) -> bool:
        """Send what is queued; True when everything went, False when a send failed (what
        was not sent stays queued)."""
        pending, self.pending = self.pending, []
        for start in range(0, len(pending), MAX_METRICS_PER_BATCH):
            try:
                self.client.log_batch(
                    self.run_id, metrics=pending[start : start + MAX_METRICS_PER_BATCH]
                )
            except Exception as exc:
                self.pending = pending[start:] + self.pending
                self.failed_sends += 1
                self._bound()
                print(
                    f"MLflow unreachable ({type(exc).__name__}: {str(exc)[:200]}); "
                    f"{len(self.pending)} metrics kept for the next flush",
                    flush=True,
                )
                return False
        self.failed_sends = 0
        return True

    def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Flush until everything is sent (the end of a run, where nothing would send what is
        left); raise ``TrackingUnavailableError`` if the server stays unreachable
        ``timeout_s``."""

        def send_all() -> None:
            if not self.flush():
                raise TrackingUnavailableError(
                    f"{len(self.pending)} metrics of run {self.run_id} not sent"
                )

        retrying(send_all, f"sending the metrics of run {self.run_id}", timeout_s)

    def _bound(self) -> None:
        excess = len(self.pending) - self.max_pending
        if excess > 0:
            del self.pending[:excess]
            self.dropped += excess
            print(
                f"MLflow unreachable: dropped the {excess} oldest metrics ({self.dropped} in all)",
                flush=True,
            )


def last_logged_step(run_id: str, key: str) -> int:
    """The highest step of ``key`` in the run, -1 for none, or when the server does not answer
    (then at worst an epoch is logged twice; training does not wait for it)."""
    try:
        history = client(patient=False).get_metric_history(run_id, key)
    except Exception as exc:
        if not is_outage(exc):
            raise
        return -1
    return max((m.step for m in history), default=-1)


def set_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
