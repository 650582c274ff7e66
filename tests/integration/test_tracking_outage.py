"""A tracking outage during training, against a real MLflow server that is stopped and started
again: no metric is lost (a bounded re-queue), rank 0 does not die, every epoch's checkpoint is
reported, and the run ends complete once the server is back."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from app import tracking
from app.datasets import load_splits
from app.train.config import TrainConfig
from app.train.context import LocalContext
from app.train.driver import evaluate_and_log_model
from app.train.loop import train_worker
from tests.integration.conftest import StoppableMlflowServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_training_survives_a_tracking_outage_and_loses_no_metric(
    server: StoppableMlflowServer,
) -> None:
    splits = load_splits("digits")
    cfg = TrainConfig(epochs=4, num_workers=1, batch_size=128, log_every_n_batches=2)
    run_id = tracking.start_run("outage", "outage", {}, {})
    sink = tracking.MetricBuffer(run_id)
    ctx = LocalContext(torch.device("cpu"))
    events: list[str] = []

    def log(line: str) -> None:
        # Each epoch's line comes just before its metrics are flushed: the server goes away
        # before epoch 1's flush and comes back before epoch 3's.
        if line.startswith("epoch 1/"):
            server.stop()
            events.append("stopped")
        if line.startswith("epoch 3/"):
            events.append(f"queued {len(sink.pending)}, {len(ctx.reports)} checkpoints")
            server.start()

    def final(model, history, global_step):  # type: ignore[no-untyped-def]
        return evaluate_and_log_model(cfg, splits, run_id, sink, model, history, global_step)

    metrics = train_worker(cfg, splits, ctx, sink, log=log, final_step=final)

    assert events[0] == "stopped"
    queued, checkpoints = events[1].split(", ")
    assert int(queued.split()[1]) > 0  # epochs 1-2 were kept while the server was down
    assert checkpoints == "2 checkpoints"  # and their checkpoints reported regardless
    assert len(ctx.reports) == 4 and ctx.checkpoint is not None and ctx.checkpoint["epoch"] == 3
    assert sink.pending == [] and sink.dropped == 0 and "test_accuracy" in metrics
    client = MlflowClient(server.uri)
    epochs = [m.value for m in client.get_metric_history(run_id, "epoch")]
    assert sorted(epochs) == [1.0, 2.0, 3.0, 4.0]  # every epoch logged, once
    steps_per_epoch = -(-len(splits.x_train) // 128)
    batch_steps = sorted(m.step for m in client.get_metric_history(run_id, "batch_loss"))
    assert batch_steps == list(range(2, 4 * steps_per_epoch + 1, 2))
    assert client.get_run(run_id).data.metrics["test_accuracy"] == metrics["test_accuracy"]
    assert client.list_artifacts(run_id, "model")  # the model, logged after the outage


def test_the_queue_is_bounded_and_counts_what_it_drops(server: StoppableMlflowServer) -> None:
    run_id = tracking.start_run("outage", "bounded", {}, {})
    buffer = tracking.MetricBuffer(run_id, max_pending=10)
    server.stop()
    for step in range(8):
        buffer.log({"a": step, "b": step}, step=step)
    assert buffer.flush() is False  # unreachable: nothing raised, nothing lost yet
    assert (len(buffer.pending), buffer.dropped) == (10, 6)  # the 6 oldest went
    server.start()
    assert buffer.flush() is True and buffer.pending == []
    steps = sorted(m.step for m in MlflowClient(server.uri).get_metric_history(run_id, "a"))
    assert steps == [3, 4, 5, 6, 7]
