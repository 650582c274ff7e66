"""The per-worker training loop: plain PyTorch behind a ``WorkerContext``
(``app.train.context``).

Data: each rank holds the dataset as uint8 tensors on its device and takes its own shard of a
seeded permutation every epoch (what DistributedSampler does), so augmentation and
normalisation run per batch on the training device with no DataLoader processes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from app.datasets import DatasetInfo, ImageSplits
from app.models import ModelSpec, build_model, cpu_state_dict, unwrap
from app.train.batches import (
    DeviceData,
    autocast,
    compile_model,
    evaluate_split,
    micro_batches,
    no_sync,
    prepare_batch,
    shard_order,
    warm_up_shapes,
)
from app.train.context import WorkerContext
from app.train.optim import Precision, lr_at, make_optimizer, resolve_precision

if TYPE_CHECKING:
    from app.train.config import TrainConfig


class MetricSink(Protocol):
    """Where rank 0's metrics go (MLflow in production); ``flush`` sends what is buffered and
    returns False, keeping it, when it could not (``tracking.MetricBuffer``)."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def flush(self) -> bool: ...


class NullSink:
    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def flush(self) -> bool:
        return True


class FinalStep(Protocol):
    """Rank 0's last act before the final report (test evaluation, model logging): done inside
    training so that a scheduler stopping the trial at its final report loses nothing.
    Returns metrics to add to the final report."""

    def __call__(
        self, model: nn.Module, history: list[dict[str, float]], global_step: int
    ) -> dict[str, float]: ...


@dataclass
class _Training:
    """Everything one worker's loop holds: the model and its optimisation state, the data on
    the device, and where it is in the schedule."""

    cfg: TrainConfig
    info: DatasetInfo
    ctx: WorkerContext
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    precision: Precision
    channels_last: bool
    train: DeviceData
    val: DeviceData
    steps_per_epoch: int
    total_steps: int
    global_step: int = 0
    start_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    extra_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def micro_bs(self) -> int:
        return self.cfg.per_worker_batch_size

    def lr(self, step: int) -> float:
        return lr_at(self.cfg, step, self.total_steps, self.steps_per_epoch)


def _set_up(cfg: TrainConfig, splits: ImageSplits, ctx: WorkerContext) -> _Training:
    device = ctx.device
    torch.manual_seed(cfg.seed)
    precision = resolve_precision(cfg.mixed_precision, device)
    channels_last = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: autotune conv kernels once
    model = build_model(ModelSpec.for_dataset(cfg.model, splits.info))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ctx.wrap_model(model)
    train = DeviceData.of(splits.x_train, splits.y_train, device)
    per_rank = len(train.labels) // ctx.world_size
    steps_per_epoch = math.ceil(
        math.ceil(per_rank / cfg.per_worker_batch_size) / cfg.grad_accum_steps
    )
    return _Training(
        cfg=cfg,
        info=splits.info,
        ctx=ctx,
        model=model,
        optimizer=make_optimizer(cfg, model),
        scaler=torch.amp.GradScaler(device.type, enabled=precision.grad_scaler),
        criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        precision=precision,
        channels_last=channels_last,
        train=train,
        val=DeviceData.of(splits.x_val, splits.y_val, device),
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * cfg.epochs,
    )


def _compile(t: _Training, log: Callable[[str], None]) -> None:
    shapes = warm_up_shapes(len(t.train.labels), len(t.val.labels), t.ctx, t.micro_bs)
    t.model, seconds = compile_model(t.model, t.train, t.info, shapes, t.precision, t.channels_last)
    t.extra_metrics = {"compile_seconds": seconds}
    if t.ctx.rank == 0:
        log(f"compiled the model in {seconds:.1f}s ({sum(map(len, shapes))} batch shapes)")


def _resume(t: _Training, log: Callable[[str], None]) -> None:
    """Continue from the context's checkpoint, when there is one: epochs, the global step and
    the schedule pick up where they stopped."""
    state = t.ctx.load_checkpoint()
    if state is None:
        return
    unwrap(t.model).load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scaler.load_state_dict(state["scaler"])
    t.start_epoch, t.global_step = state["epoch"] + 1, state["global_step"]
    t.history = state["history"]
    log(f"resumed from checkpoint after epoch {t.start_epoch}/{t.cfg.epochs}, step {t.global_step}")


def _train_epoch(t: _Training, epoch: int, sink: MetricSink) -> tuple[torch.Tensor, int]:
    """One epoch of optimizer steps on this rank's shard; returns (loss sum, correct) on the
    device and the number of images seen. Batch metrics go to ``sink`` every N steps."""
    cfg, device = t.cfg, t.ctx.device
    t.model.train()
    order = shard_order(len(t.train.labels), epoch, cfg.seed, t.ctx.rank, t.ctx.world_size)
    batches = list(micro_batches(order.to(device), t.micro_bs))
    # Running sums (loss, correct) stay on the device: no host sync or copy per step, only
    # at log points. Image counts are known on the host.
    epoch_sums = torch.zeros(2, dtype=torch.float64, device=device)
    window = torch.zeros(2, dtype=torch.float64, device=device)
    epoch_count = window_count = 0
    for first in range(0, len(batches), cfg.grad_accum_steps):
        group = batches[first : first + cfg.grad_accum_steps]
        for i, idx in enumerate(group):
            stats = _accumulate(t, idx, skip_sync=i < len(group) - 1, scale=len(group))
            epoch_sums += stats
            window += stats
            epoch_count += len(idx)
            window_count += len(idx)
        _optimizer_step(t)
        if t.global_step % cfg.log_every_n_batches == 0:
            loss_sum, correct = window.tolist()
            batch_metrics = {"batch_loss": loss_sum / window_count}
            batch_metrics["batch_accuracy"] = correct / window_count
            sink.log(batch_metrics, step=t.global_step)
            window.zero_()
            window_count = 0
    return epoch_sums, epoch_count


def _accumulate(t: _Training, idx: torch.Tensor, skip_sync: bool, scale: int) -> torch.Tensor:
    """Forward and backward of one micro-batch; returns its (loss sum, correct) on the device."""
    images = prepare_batch(t.train.images[idx], t.info, True, t.channels_last)
    labels = t.train.labels[idx]
    with no_sync(t.model, skip_sync), autocast(t.ctx.device, t.precision):
        logits = t.model(images)
        loss = t.criterion(logits.float(), labels)
        t.scaler.scale(loss / scale).backward()
    return torch.stack(
        [
            loss.detach().double() * len(idx),
            (logits.detach().argmax(1) == labels).sum().double(),
        ]
    )


def _optimizer_step(t: _Training) -> None:
    lr = t.lr(t.global_step)
    for param_group in t.optimizer.param_groups:
        param_group["lr"] = lr
    t.scaler.step(t.optimizer)
    t.scaler.update()
    t.optimizer.zero_grad(set_to_none=True)
    t.global_step += 1


def _epoch_metrics(
    t: _Training, epoch: int, sums: torch.Tensor, count: int, seconds: float
) -> dict[str, float]:
    # tolist() waits for the device, so the epoch time includes all queued GPU work.
    totals = torch.cat([sums, sums.new_tensor([count])])
    loss_sum, correct, count_all = t.ctx.all_reduce_sum(totals).tolist()
    val_loss, val_accuracy = evaluate_split(
        t.model, t.val, t.info, t.ctx, t.micro_bs * 2, t.precision, t.channels_last
    )
    return {
        "epoch": float(epoch + 1),
        "train_loss": loss_sum / count_all,
        "train_accuracy": correct / count_all,
        "val_loss": val_loss,
        "val_accuracy": val_accuracy,
        "lr": t.lr(max(t.global_step - 1, 0)),
        "images_per_sec": count_all / seconds,
        "epoch_seconds": seconds,
        **t.extra_metrics,
    }


def _log_epoch(log: Callable[[str], None], cfg: TrainConfig, metrics: dict[str, float]) -> None:
    log(
        f"epoch {metrics['epoch']:.0f}/{cfg.epochs}  train_loss {metrics['train_loss']:.4f}  "
        f"train_acc {metrics['train_accuracy']:.4f}  val_loss {metrics['val_loss']:.4f}  "
        f"val_acc {metrics['val_accuracy']:.4f}  lr {metrics['lr']:.5f}  "
        f"{metrics['images_per_sec']:.0f} img/s"
    )


def _checkpoint(t: _Training, epoch: int) -> dict[str, Any]:
    return {
        "model": cpu_state_dict(t.model),
        "optimizer": t.optimizer.state_dict(),
        "scaler": t.scaler.state_dict(),
        "epoch": epoch,
        "global_step": t.global_step,
        "history": t.history,
    }


def train_worker(
    cfg: TrainConfig,
    splits: ImageSplits,
    ctx: WorkerContext,
    sink: MetricSink | None = None,
    log: Callable[[str], None] = print,
    final_step: FinalStep | None = None,
) -> dict[str, float]:
    """Train on this worker's shard; rank 0 logs metrics and writes the checkpoint each epoch,
    and after the last epoch runs ``final_step``.

    Returns the last epoch's metrics. Resumes from ``ctx.load_checkpoint()`` when there is one:
    epochs, the global step and the schedule continue where they stopped."""
    sink = sink or NullSink()
    t = _set_up(cfg, splits, ctx)
    if cfg.compile:
        _compile(t, log)
    _resume(t, log)
    metrics: dict[str, float] = {}
    for epoch in range(t.start_epoch, cfg.epochs):
        started = time.perf_counter()
        sums, count = _train_epoch(t, epoch, sink)
        metrics = _epoch_metrics(t, epoch, sums, count, time.perf_counter() - started)
        t.history.append(metrics)
        if ctx.rank == 0:
            _log_epoch(log, cfg, metrics)
            sink.log(metrics, step=t.global_step)
            # Before the report, which a scheduler may answer by stopping the trial, and unable
            # to fail: what the tracking server does not take stays queued for the next flush,
            # so an outage never costs the checkpoint below.
            sink.flush()
            if final_step is not None and epoch + 1 == cfg.epochs:
                # Also before the final report; it outlasts an outage (tracking.retrying) and
                # sends what is still queued.
                metrics = {**metrics, **final_step(unwrap(t.model), t.history, t.global_step)}
        ctx.report(metrics, _checkpoint(t, epoch) if ctx.rank == 0 else None)
    return metrics
