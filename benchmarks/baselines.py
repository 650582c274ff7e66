"""Hand-written PyTorch training loops that benchmarks compare the project's loop against.

Neither touches the platform (no WorkerContext, metric sink, checkpoints or schedule): what
the project's loop costs on top of them is the platform's overhead. Both return the wall time
of each epoch, measured after the device has finished the epoch's work.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
from torch import nn

from app.datasets import ImageSplits, augment, normalize
from app.models import ModelSpec, build_model
from app.train.config import TrainConfig


def _finish(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sgd(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def plain_epochs(
    cfg: TrainConfig,
    splits: ImageSplits,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    compile_model: bool = False,
) -> list[float]:
    """A hand-written loop with the same tricks as the project's: the split on the device as
    uint8, augment and normalise per batch there, optional autocast / channels_last /
    torch.compile; SGD at a constant learning rate."""
    torch.manual_seed(cfg.seed)
    model = build_model(ModelSpec.for_dataset(cfg.model, splits.info)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model: Any = torch.compile(model) if compile_model else model
    optimizer = _sgd(cfg, model)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    criterion = nn.CrossEntropyLoss()
    x_train, y_train = splits.x_train.to(device), splits.y_train.to(device)
    precision = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    times = []
    for _ in range(cfg.epochs):
        model.train()
        started = time.perf_counter()
        for idx in torch.split(torch.randperm(len(y_train), device=device), cfg.batch_size):
            images = normalize(augment(x_train[idx], splits.info), splits.info)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with precision:
                loss = criterion(step_model(images).float(), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        _finish(device)
        times.append(time.perf_counter() - started)
    return times


def naive_epochs(cfg: TrainConfig, splits: ImageSplits, device: torch.device) -> list[float]:
    """The loop most tutorials write: fp32, a DataLoader over CPU float tensors (normalised
    once up front, no augmentation, so it does less work than the others), each batch copied
    to the device."""
    torch.manual_seed(cfg.seed)
    model = build_model(ModelSpec.for_dataset(cfg.model, splits.info)).to(device)
    optimizer = _sgd(cfg, model)
    criterion = nn.CrossEntropyLoss()
    dataset = torch.utils.data.TensorDataset(normalize(splits.x_train, splits.info), splits.y_train)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True)
    times = []
    for _ in range(cfg.epochs):
        model.train()
        started = time.perf_counter()
        for images, labels in loader:
            loss = criterion(model(images.to(device)), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _finish(device)
        times.append(time.perf_counter() - started)
    return times
