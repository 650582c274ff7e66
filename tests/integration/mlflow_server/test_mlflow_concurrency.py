"""Concurrent writers on the PostgreSQL store: nothing is lost."""

from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from .conftest import Stack

pytestmark = pytest.mark.integration

WRITERS = 8
POINTS = 1_000
BATCH = 100


def _write(client: MlflowClient, experiment_id: str, writer: int) -> str:
    run_id = client.create_run(experiment_id).info.run_id
    now = int(time.time() * 1000)
    for start in range(0, POINTS, BATCH):
        metrics = [
            Metric("loss", writer * POINTS + step, now + step, step)
            for step in range(start, start + BATCH)
        ]
        client.log_batch(run_id, metrics=metrics)
    client.set_terminated(run_id)
    return run_id


def test_concurrent_writers_lose_no_metric(stack: Stack, client: MlflowClient) -> None:
    experiment_id = client.create_experiment(f"concurrency-{secrets.token_hex(3)}")
    with ThreadPoolExecutor(WRITERS) as pool:
        run_ids = list(pool.map(lambda w: _write(client, experiment_id, w), range(WRITERS)))

    with stack.database() as cur:
        for writer, run_id in enumerate(run_ids):
            cur.execute(
                "SELECT step, value FROM metrics WHERE run_uuid = %s AND key = 'loss' "
                "ORDER BY step",
                (run_id,),
            )
            assert cur.fetchall() == [(step, writer * POINTS + step) for step in range(POINTS)]
        cur.execute(
            "SELECT count(*) FROM runs WHERE run_uuid = ANY(%s) AND status = 'FINISHED'", (run_ids,)
        )
        assert cur.fetchone() == (WRITERS,)
