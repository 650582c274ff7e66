"""The per-worker training loop: plain PyTorch behind a ``WorkerContext``
(``app.train.context``).

Data: each rank holds the dataset as uint8 tensors on its device and takes its own shard of a
seeded permutation every epoch (what DistributedSampler does), so augmentation and
normalisation run per batch on the training device with no DataLoader processes.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import nn

from app.data import DatasetInfo, ImageSplits, augment, normalize
from app.models import ModelSpec, build_model, cpu_state_dict, unwrap
from app.train.context import WorkerContext
from app.train.optim import Precision, lr_at, make_optimizer, resolve_precision

if TYPE_CHECKING:
    from app.train.config import TrainConfig

class MetricSink(Protocol):
    """Where rank 0's metrics go (MLflow in production); ``flush`` sends what is buffered."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def flush(self) -> None: ...


class NullSink:
    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def flush(self) -> None:
        pass


class FinalStep(Protocol):
    """Rank 0's last act before the final report (test evaluation, model logging): done inside
    training so that a scheduler stopping the trial at its final report loses nothing.
    Returns metrics to add to the final report."""

    def __call__(
        self, model: nn.Module, history: list[dict[str, float]], global_step: int
    ) -> dict[str, float]: ...


# ---------------------------------------------------------------------------------------------
# Data shards


def shard_order(n: int, epoch: int, seed: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's sample order for an epoch: the same seeded permutation on every rank, cut
    into equal strided shards (a rank's extra tail is dropped so every rank takes the same
    number of steps, which DDP's collectives need)."""
    generator = torch.Generator().manual_seed(seed * 10_007 + epoch)
    permutation = torch.randperm(n, generator=generator)
    per_rank = n // world_size
    return permutation[rank : per_rank * world_size : world_size]


def micro_batches(order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    yield from torch.split(order, batch_size)


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class DeviceData:
    """A split held on the training device as uint8 (4x smaller than float32)."""

    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def of(cls, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> DeviceData:
        return cls(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))


def prepare_batch(
    images: torch.Tensor, info: DatasetInfo, train: bool, channels_last: bool
) -> torch.Tensor:
    if train:
        images = augment(images, info)
    batch = normalize(images, info)
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch


def evaluate_split(
    model: nn.Module,
    data: DeviceData,
    info: DatasetInfo,
    ctx: WorkerContext,
    batch_size: int,
    precision: Precision,
    channels_last: bool,
) -> tuple[float, float]:
    """(mean loss, accuracy) over the whole split; each rank scores a strided shard."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=ctx.device)
    indices = torch.arange(ctx.rank, len(data.labels), ctx.world_size, device=data.labels.device)
    with torch.inference_mode(), _autocast(ctx.device, precision):
        for idx in torch.split(indices, batch_size):
            logits = model(prepare_batch(data.images[idx], info, False, channels_last))
            labels = data.labels[idx]
            totals[0] += nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
            totals[1] += (logits.argmax(1) == labels).sum()
            totals[2] += len(idx)
    totals = ctx.all_reduce_sum(totals)
    count = max(totals[2].item(), 1.0)
    return totals[0].item() / count, totals[1].item() / count


def _autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[Any]:
    if precision.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=precision.autocast_dtype)


def _no_sync(model: nn.Module, skip: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP all-reduces gradients on every backward; skip it for all but the last micro-batch."""
    no_sync: Callable[[], contextlib.AbstractContextManager[Any]] | None = getattr(
        model, "no_sync", None
    )
    return no_sync() if skip and no_sync is not None else contextlib.nullcontext()


def warm_up_shapes(
    n_train: int, n_val: int, ctx: WorkerContext, micro_bs: int
) -> tuple[list[int], list[int]]:
    """The distinct batch sizes this rank's loop will feed the model: (train, eval)."""
    per_rank = n_train // ctx.world_size
    eval_rows = len(range(ctx.rank, n_val, ctx.world_size))
    train = {min(micro_bs, per_rank), per_rank % micro_bs}
    evaluation = {min(2 * micro_bs, eval_rows), eval_rows % (2 * micro_bs)}
    return sorted(train - {0}), sorted(evaluation - {0})


def compile_model(
    model: nn.Module,
    data: DeviceData,
    info: DatasetInfo,
    shapes: tuple[list[int], list[int]],
    precision: Precision,
    channels_last: bool,
) -> tuple[nn.Module, float]:
    """torch.compile the model and compile it now, for every batch shape the loop will see, so
    the compile time is measured apart and no recompile lands mid-epoch (static shapes: the
    fastest kernels). The warm-up takes no optimizer step and its BatchNorm updates are undone,
    so training starts from the same state as without it."""
    compiled = cast(nn.Module, torch.compile(model, dynamic=False))
    saved = {k: v.clone() for k, v in unwrap(model).state_dict().items()}
    device = data.images.device
    train_sizes, eval_sizes = shapes
    started = time.perf_counter()
    compiled.train()
    for size in train_sizes:
        images = prepare_batch(data.images[:size], info, True, channels_last)
        with _autocast(device, precision):
            logits = compiled(images)
        nn.functional.cross_entropy(logits.float(), data.labels[:size]).backward()
    compiled.eval()
    with torch.inference_mode(), _autocast(device, precision):
        for size in eval_sizes:
            compiled(prepare_batch(data.images[:size], info, False, channels_last))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    unwrap(model).load_state_dict(saved)
    model.zero_grad(set_to_none=True)
    return compiled, seconds


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
    info = splits.info
    device = ctx.device
    torch.manual_seed(cfg.seed)
    precision = resolve_precision(cfg.mixed_precision, device)
    channels_last = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: autotune conv kernels once

    model = build_model(ModelSpec.for_dataset(cfg.model, info))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ctx.wrap_model(model)
    optimizer = make_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.grad_scaler)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    train = DeviceData.of(splits.x_train, splits.y_train, device)
    val = DeviceData.of(splits.x_val, splits.y_val, device)
    micro_bs = cfg.per_worker_batch_size
    per_rank = len(train.labels) // ctx.world_size
    steps_per_epoch = math.ceil(math.ceil(per_rank / micro_bs) / cfg.grad_accum_steps)
    total_steps = steps_per_epoch * cfg.epochs
    compile_metrics: dict[str, float] = {}
    if cfg.compile:
        shapes = warm_up_shapes(len(train.labels), len(val.labels), ctx, micro_bs)
        model, seconds = compile_model(model, train, info, shapes, precision, channels_last)
        compile_metrics = {"compile_seconds": seconds}
        if ctx.rank == 0:
            log(f"compiled the model in {seconds:.1f}s ({sum(map(len, shapes))} batch shapes)")

    start_epoch, global_step, history = 0, 0, []
    state = ctx.load_checkpoint()
    if state is not None:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, global_step = state["epoch"] + 1, state["global_step"]
        history = state["history"]
        log(f"resumed from checkpoint after epoch {start_epoch}/{cfg.epochs}, step {global_step}")

    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        started = time.perf_counter()
        order = shard_order(len(train.labels), epoch, cfg.seed, ctx.rank, ctx.world_size)
        batches = list(micro_batches(order.to(device), micro_bs))
        # Running sums (loss, correct) stay on the device: no host sync or copy per step, only
        # at log points. Image counts are known on the host.
        epoch_sums = torch.zeros(2, dtype=torch.float64, device=device)
        window = torch.zeros(2, dtype=torch.float64, device=device)
        epoch_count = window_count = 0
        for first in range(0, len(batches), cfg.grad_accum_steps):
            group = batches[first : first + cfg.grad_accum_steps]
            for i, idx in enumerate(group):
                images = prepare_batch(train.images[idx], info, True, channels_last)
                labels = train.labels[idx]
                with _no_sync(model, i < len(group) - 1), _autocast(device, precision):
                    logits = model(images)
                    loss = criterion(logits.float(), labels)
                    scaler.scale(loss / len(group)).backward()
                stats = torch.stack(
                    [
                        loss.detach().double() * len(idx),
                        (logits.detach().argmax(1) == labels).sum().double(),
                    ]
                )
                epoch_sums += stats
                window += stats
                epoch_count += len(idx)
                window_count += len(idx)
            lr = lr_at(cfg, global_step, total_steps, steps_per_epoch)
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            if global_step % cfg.log_every_n_batches == 0:
                loss_sum, correct = window.tolist()
                seen = window_count
                sink.log(
                    {"batch_loss": loss_sum / seen, "batch_accuracy": correct / seen},
                    step=global_step,
                )
                window.zero_()
                window_count = 0

        # tolist() waits for the device, so the epoch time includes all queued GPU work.
        totals = torch.cat([epoch_sums, epoch_sums.new_tensor([epoch_count])])
        loss_sum, correct, count = ctx.all_reduce_sum(totals).tolist()
        seconds = time.perf_counter() - started
        val_loss, val_accuracy = evaluate_split(
            model, val, info, ctx, micro_bs * 2, precision, channels_last
        )
        metrics = {
            "epoch": float(epoch + 1),
            "train_loss": loss_sum / count,
            "train_accuracy": correct / count,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": lr_at(cfg, max(global_step - 1, 0), total_steps, steps_per_epoch),
            "images_per_sec": count / seconds,
            "epoch_seconds": seconds,
            **compile_metrics,
        }
        history.append(metrics)
        if ctx.rank == 0:
            log(
                f"epoch {epoch + 1}/{cfg.epochs}  train_loss {metrics['train_loss']:.4f}  "
                f"train_acc {metrics['train_accuracy']:.4f}  val_loss {val_loss:.4f}  "
                f"val_acc {val_accuracy:.4f}  lr {metrics['lr']:.5f}  "
                f"{metrics['images_per_sec']:.0f} img/s"
            )
            sink.log(metrics, step=global_step)
            sink.flush()
            if final_step is not None and epoch + 1 == cfg.epochs:
                metrics = {**metrics, **final_step(unwrap(model), history, global_step)}
        checkpoint = None
        if ctx.rank == 0:
            checkpoint = {
                "model": cpu_state_dict(model),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "global_step": global_step,
                "history": history,
            }
        ctx.report(metrics, checkpoint)
    return metrics
