"""What runs cost: the cost every training run and sweep trial recorded in MLflow, summed by
experiment, model and month.

    python -m app.cost.report [--experiment NAME ...] [--since YYYY-MM]
                              [--by experiment|model|month ...] [--json]

Counted once each: plain training runs and sweep trials (``cost_usd``, ``cpu_seconds``,
``gpu_seconds``, ``node_seconds``; a trial ASHA stopped early also ``cost_saved_usd``). A sweep's
parent run (tag ``sweep_parent=true``) repeats its trials' figures and is never added on top.
A run without ``cost_usd`` (older runs, evaluation runs) is counted as unpriced, not as free.
Month: the run's start time in UTC. Exit status: 0 (a report, or no runs), 1 (the tracking
server unreachable or refusing), 2 (bad arguments, an unknown experiment).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from mlflow.entities import Experiment, Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from app import tracking

DIMENSIONS = ("experiment", "model", "month")
PAGE_SIZE = 1000  # runs per search_runs request (MLflow's default page)
EXPERIMENTS_PER_SEARCH = 100  # experiment ids per search_runs filter
NO_TAG = "-"  # a run without a model/dataset tag
EXIT_FAILED = 1
EXIT_USAGE = 2
# An interactive command fails fast on a tracking server that is away (MLflow's own default
# retries for about four minutes); a user's explicit settings win.
FAST_FAIL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")  # "[Errno 111] Connection refused"
MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


class UnknownExperimentError(LookupError):
    def __init__(self, missing: Sequence[str], known: Sequence[str]) -> None:
        names = ", ".join(sorted(known)) or "none"
        super().__init__(f"no experiment named {', '.join(missing)}; known experiments: {names}")


@dataclass
class Totals:
    """Sums over the runs of one row (or of the whole report)."""

    runs: int = 0  # priced runs (plain runs and trials)
    unpriced: int = 0
    cost_usd: float = 0.0
    cpu_seconds: float = 0.0
    gpu_seconds: float = 0.0
    node_seconds: float = 0.0
    stopped_early: int = 0
    saved_usd: float = 0.0
    price_tables: set[str] = field(default_factory=set)

    def add(self, run: Run) -> None:
        metrics = run.data.metrics
        if "cost_usd" not in metrics:
            self.unpriced += 1
            return
        self.runs += 1
        self.cost_usd += metrics["cost_usd"]
        self.cpu_seconds += metrics.get("cpu_seconds", 0.0)
        self.gpu_seconds += metrics.get("gpu_seconds", 0.0)
        self.node_seconds += metrics.get("node_seconds", 0.0)
        if "cost_saved_usd" in metrics:
            self.stopped_early += 1
            self.saved_usd += metrics["cost_saved_usd"]
        table = run.data.tags.get("cost.price_table")
        if table:
            self.price_tables.add(table)

    def figures(self) -> dict[str, Any]:
        """The JSON figures: USD and hours; cost is null where no run of the row was priced."""
        return {
            "runs": self.runs,
            "unpriced": self.unpriced,
            "cost_usd": round(self.cost_usd, 6) if self.runs else None,
            "cpu_hours": round(self.cpu_seconds / 3600, 6),
            "gpu_hours": round(self.gpu_seconds / 3600, 6),
            "node_hours": round(self.node_seconds / 3600, 6),
            "stopped_early": self.stopped_early,
            "saved_usd": round(self.saved_usd, 6),
        }


@dataclass
class Report:
    by: tuple[str, ...]
    rows: dict[tuple[str, ...], Totals] = field(default_factory=dict)
    total: Totals = field(default_factory=Totals)
    sweeps: int = 0  # parent runs seen (not counted: their trials are)

    def add(self, run: Run, experiment: str) -> None:
        if run.data.tags.get("sweep_parent") == "true":
            self.sweeps += 1
            return
        values = {
            "experiment": experiment,
            "model": run.data.tags.get("model") or NO_TAG,
            "month": month_of(run.info.start_time),
        }
        key = tuple(values[name] for name in self.by)
        self.rows.setdefault(key, Totals()).add(run)
        self.total.add(run)


def month_of(start_time_ms: int | None) -> str:
    if start_time_ms is None:
        return NO_TAG
    return datetime.fromtimestamp(start_time_ms / 1000, tz=UTC).strftime("%Y-%m")


def month_start_ms(month: str) -> int:
    """Milliseconds since the epoch at the first instant (UTC) of ``YYYY-MM``."""
    found = MONTH.match(month)
    if found is None:
        raise ValueError(f"--since wants YYYY-MM, got {month!r}")
    start = datetime(int(found.group(1)), int(found.group(2)), 1, tzinfo=UTC)
    return int(start.timestamp() * 1000)


def experiments(client: MlflowClient) -> list[Experiment]:
    """Every active experiment, page by page."""
    found: list[Experiment] = []
    token: str | None = None
    while True:
        page = client.search_experiments(
            view_type=ViewType.ACTIVE_ONLY, max_results=PAGE_SIZE, page_token=token
        )
        found.extend(page)
        token = page.token
        if not token:
            return found


def select(known: Sequence[Experiment], names: Sequence[str]) -> list[Experiment]:
    """The experiments named (all when none is); an unknown name is an error listing the known."""
    if not names:
        return list(known)
    by_name = {experiment.name: experiment for experiment in known}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise UnknownExperimentError(missing, list(by_name))
    return [by_name[name] for name in dict.fromkeys(names)]


def runs(
    client: MlflowClient, experiment_ids: Sequence[str], since_ms: int | None
) -> Iterator[Run]:
    """The experiments' active runs started at or after ``since_ms``, page by page: the filter
    is applied by the server, so a report over a recent month does not fetch years of runs."""
    query = f"attributes.start_time >= {since_ms}" if since_ms is not None else ""
    for first in range(0, len(experiment_ids), EXPERIMENTS_PER_SEARCH):
        chunk = list(experiment_ids[first : first + EXPERIMENTS_PER_SEARCH])
        token: str | None = None
        while True:
            page = client.search_runs(
                chunk,
                filter_string=query,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=PAGE_SIZE,
                page_token=token,
            )
            yield from page
            token = page.token
            if not token:
                break


def build(
    client: MlflowClient, names: Sequence[str], since: str | None, by: Sequence[str]
) -> Report:
    chosen = select(experiments(client), names)
    names_by_id = {str(experiment.experiment_id): experiment.name for experiment in chosen}
    report = Report(tuple(name for name in DIMENSIONS if name in by))
    since_ms = month_start_ms(since) if since else None
    for run in runs(client, list(names_by_id), since_ms):
        report.add(run, names_by_id[str(run.info.experiment_id)])
    return report


def json_lines(report: Report) -> Iterable[str]:
    """One object per row (``"row": true``), then the total (``"total": true``)."""
    for key in sorted(report.rows):
        row = report.rows[key]
        yield json.dumps({"row": True, **dict(zip(report.by, key, strict=True)), **row.figures()})
    yield json.dumps(
        {
            "total": True,
            **report.total.figures(),
            "sweeps": report.sweeps,
            "price_tables": sorted(report.total.price_tables),
        }
    )


def _cells(totals: Totals) -> list[str]:
    return [
        str(totals.runs),
        f"{totals.cost_usd:.4f}" if totals.runs else NO_TAG,
        f"{totals.cpu_seconds / 3600:.2f}",
        f"{totals.gpu_seconds / 3600:.2f}",
        f"{totals.node_seconds / 3600:.2f}",
        str(totals.stopped_early),
        f"{totals.saved_usd:.4f}",
        str(totals.unpriced),
    ]


FIGURE_HEADERS = [
    "runs",
    "cost_usd",
    "cpu_h",
    "gpu_h",
    "node_h",
    "stopped_early",
    "saved_usd",
    "unpriced",
]


def table(report: Report) -> list[str]:
    """The aligned table: text columns left, figures right, a rule and the total row."""
    headers = [*report.by, *FIGURE_HEADERS]
    body = [[*key, *_cells(report.rows[key])] for key in sorted(report.rows)]
    total = ["total", *[""] * (len(report.by) - 1), *_cells(report.total)]
    widths = [max(len(line[i]) for line in (headers, *body, total)) for i in range(len(headers))]
    texts = len(report.by)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i < texts else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    tables = ", ".join(sorted(report.total.price_tables)) or "none recorded"
    footer = [f"price table: {tables}"]
    if len(report.total.price_tables) > 1:
        footer = [f"price tables: {tables} (runs priced by different tables)"]
    if report.sweeps:
        footer.append(f"sweeps: {report.sweeps} (counted through their trials)")
    if report.total.unpriced:
        count = report.total.unpriced
        runs_word = "run" if count == 1 else "runs"
        footer.append(f"unpriced: {count} {runs_word} without cost_usd (not in the cost)")
    return [line(headers), rule, *map(line, body), rule, line(total), *footer]


def shown(uri: str) -> str:
    """The tracking URI as printed: never with a password given in it."""
    where = urlsplit(uri)
    if where.password is None:
        return uri
    port = f":{where.port}" if where.port else ""
    return where._replace(netloc=f"{where.username}:***@{where.hostname}{port}").geturl()


def failure(exc: BaseException, uri: str) -> str:
    """One line for a tracking failure: where, and the cause without the request's innards."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not tracking.is_outage(exc):
        return f"MLflow at {shown(uri)} refused the report: {text[:300]}"
    cause = ERRNO.search(text)
    return f"cannot reach the MLflow tracking server at {shown(uri)}: " + (
        cause.group(1).strip() if cause else text[:300]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app.cost.report",
        description="What training runs and sweep trials cost, from their MLflow runs.",
    )
    parser.add_argument(
        "--experiment",
        action="append",
        default=[],
        metavar="NAME",
        help="an experiment to report (repeatable; default: every experiment)",
    )
    parser.add_argument("--since", metavar="YYYY-MM", help="runs started in this month or later")
    parser.add_argument(
        "--by",
        action="append",
        choices=DIMENSIONS,
        default=[],
        help="group rows by (repeatable; default: experiment, model and month)",
    )
    parser.add_argument("--json", action="store_true", help="JSON lines: the rows, then the total")
    args = parser.parse_args(argv)
    if args.since is not None and MONTH.match(args.since) is None:
        parser.error(f"--since wants YYYY-MM, got {args.since!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for name, value in FAST_FAIL_ENV.items():
        os.environ.setdefault(name, value)
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # no retry warnings over the message
    uri = tracking.tracking_uri()
    mlflow_client = tracking.client(patient=False)
    try:
        report = build(mlflow_client, args.experiment, args.since, args.by or DIMENSIONS)
    except UnknownExperimentError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except Exception as exc:
        if not (tracking.is_outage(exc) or isinstance(exc, MlflowException)):
            raise
        print(f"error: {failure(exc, uri)}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    if args.json:
        for text in json_lines(report):
            print(text)
        return 0
    if not report.rows:
        where = ", ".join(args.experiment) if args.experiment else "any experiment"
        since = f" since {args.since}" if args.since else ""
        print(f"no runs in {where}{since} (tracking: {shown(uri)})")
        return 0
    print("\n".join(table(report)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
