"""The data side of the training loop: each rank's shard of an epoch, batches prepared on the
device, scoring a split, and compiling the model for the batch shapes the loop will feed it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from app.datasets import DatasetInfo, augment, normalize
from app.models import unwrap
from app.train.context import WorkerContext
from app.train.optim import Precision

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
    with torch.inference_mode(), autocast(ctx.device, precision):
        for idx in torch.split(indices, batch_size):
            logits = model(prepare_batch(data.images[idx], info, False, channels_last))
            labels = data.labels[idx]
            totals[0] += nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
            totals[1] += (logits.argmax(1) == labels).sum()
            totals[2] += len(idx)
    totals = ctx.all_reduce_sum(totals)
    count = max(totals[2].item(), 1.0)
    return totals[0].item() / count, totals[1].item() / count


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[Any]:
    if precision.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=precision.autocast_dtype)


def no_sync(model: nn.Module, skip: bool) -> contextlib.AbstractContextManager[Any]:
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
        with autocast(device, precision):
            logits = compiled(images)
        nn.functional.cross_entropy(logits.float(), data.labels[:size]).backward()
    compiled.eval()
    with torch.inference_mode(), autocast(device, precision):
        for size in eval_sizes:
            compiled(prepare_batch(data.images[:size], info, False, channels_last))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    unwrap(model).load_state_dict(saved)
    model.zero_grad(set_to_none=True)
    return compiled, seconds
