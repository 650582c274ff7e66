import pytest
import torch

from app.datasets import load_splits
from app.train.batches import shard_order
from app.train.config import TrainConfig
from app.train.context import LocalContext
from app.train.loop import train_worker
from app.train.optim import lr_at, resolve_precision


class RecordingSink:
    def __init__(self) -> None:
        self.logged: list[tuple[dict[str, float], int]] = []
        self.flushes = 0

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.logged.append((metrics, step))

    def flush(self) -> None:
        self.flushes += 1


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_splits("digits")


def test_shards_partition_each_epoch_and_change_order() -> None:
    shards = [shard_order(103, epoch=0, seed=1, rank=r, world_size=4) for r in range(4)]
    joined = torch.cat(shards)
    assert len(set(joined.tolist())) == len(joined) == 100  # disjoint, equal, tail dropped
    assert {len(s) for s in shards} == {25}
    assert not torch.equal(shard_order(103, 1, 1, 0, 4), shards[0])


def test_lr_schedules() -> None:
    cfg = TrainConfig(lr=0.1, warmup_epochs=1, lr_schedule="onecycle")
    assert lr_at(cfg, 0, 100, 10) == pytest.approx(0.01)
    assert lr_at(cfg, 9, 100, 10) == pytest.approx(0.1)
    assert lr_at(cfg, 99, 100, 10) < 0.01
    cosine = cfg.model_copy(update={"lr_schedule": "cosine"})
    assert lr_at(cosine, 55, 100, 10) == pytest.approx(0.05, rel=0.05)
    step = cfg.model_copy(update={"lr_schedule": "step"})
    assert [lr_at(step, s, 100, 10) for s in (0, 50, 80)] == pytest.approx([0.1, 0.01, 0.001])
    assert lr_at(cfg.model_copy(update={"lr_schedule": "constant"}), 77, 100, 10) == 0.1


def test_precision_falls_back_to_fp32_on_cpu() -> None:
    assert resolve_precision("bf16", torch.device("cpu")).autocast_dtype is None
    assert resolve_precision("auto", torch.device("cpu")).name == "fp32"


def test_loop_learns_logs_on_a_continuous_step_and_checkpoints(digits) -> None:  # type: ignore[no-untyped-def]
    cfg = TrainConfig(epochs=3, num_workers=1, batch_size=64, log_every_n_batches=5, lr=0.05)
    ctx, sink = LocalContext(torch.device("cpu")), RecordingSink()
    metrics = train_worker(cfg, digits, ctx, sink, log=lambda _: None)
    assert metrics["val_accuracy"] > 0.8
    steps_per_epoch = -(-len(digits.x_train) // 64)
    batch_steps = [step for m, step in sink.logged if "batch_loss" in m]
    assert batch_steps == list(range(5, 3 * steps_per_epoch + 1, 5))
    epoch_steps = [step for m, step in sink.logged if "val_accuracy" in m]
    assert epoch_steps == [steps_per_epoch * e for e in (1, 2, 3)]
    assert sink.flushes == 3  # one batched send per epoch
    assert ctx.checkpoint is not None and ctx.checkpoint["epoch"] == 2
    assert ctx.checkpoint["global_step"] == 3 * steps_per_epoch


def test_resume_continues_epochs_and_steps(digits) -> None:  # type: ignore[no-untyped-def]
    cfg = TrainConfig(epochs=2, num_workers=1, batch_size=128, log_every_n_batches=1)
    ctx = LocalContext(torch.device("cpu"))
    train_worker(cfg.model_copy(update={"epochs": 1}), digits, ctx, log=lambda _: None)
    first = ctx.checkpoint
    assert first is not None
    sink, lines = RecordingSink(), []
    train_worker(cfg, digits, ctx, sink, log=lines.append)
    assert any("resumed from checkpoint after epoch 1/2" in line for line in lines)
    assert [m["epoch"] for m in ctx.reports] == [1.0, 2.0]  # epoch 1 not trained again
    batch_steps = [step for m, step in sink.logged if "batch_loss" in m]
    assert batch_steps[0] == first["global_step"] + 1


def test_gradient_accumulation_takes_fewer_optimizer_steps(digits) -> None:  # type: ignore[no-untyped-def]
    cfg = TrainConfig(epochs=1, num_workers=1, batch_size=32, grad_accum_steps=4)
    ctx = LocalContext(torch.device("cpu"))
    train_worker(cfg, digits, ctx, log=lambda _: None)
    micro = -(-len(digits.x_train) // 32)
    assert ctx.checkpoint is not None
    assert ctx.checkpoint["global_step"] == -(-micro // 4)
