"""Where the training loop runs: the ``WorkerContext`` interface (rank, device, DDP wrap,
all-reduce, checkpoint load / report) and its two implementations. ``RayWorkerContext`` runs the
loop on Ray Train workers; ``LocalContext`` runs it in one process (unit tests, the GPU
benchmark). Imports without Ray installed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from app.devices import pick_device

CHECKPOINT_FILE = "state.pt"


class WorkerContext(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def wrap_model(self, model: nn.Module) -> nn.Module: ...

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor: ...

    def load_checkpoint(self) -> dict[str, Any] | None: ...

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None: ...


class LocalContext:
    """One process, no Ray: keeps the latest checkpoint state in memory."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.rank, self.world_size = 0, 1
        self.device = device or pick_device()
        self.checkpoint: dict[str, Any] | None = None
        self.reports: list[dict[str, float]] = []

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def load_checkpoint(self) -> dict[str, Any] | None:
        return self.checkpoint

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        self.reports.append(metrics)
        if state is not None:
            self.checkpoint = state


class RayWorkerContext:
    """A Ray Train worker: DDP through ``prepare_model``, checkpoints through ``report``."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()

    def wrap_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(values)
        return values

    def load_checkpoint(self) -> dict[str, Any] | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return load_state(Path(folder))

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        import ray.train

        # report() is a collective: every rank calls it, only rank 0 passes the checkpoint.
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if state is not None:
                save_state(state, Path(folder))
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint)


def save_state(state: dict[str, Any], folder: Path) -> None:
    torch.save(state, folder / CHECKPOINT_FILE)


def load_state(folder: Path) -> dict[str, Any]:
    # weights_only: a checkpoint holds tensors, numbers, strings and containers, never code.
    state: dict[str, Any] = torch.load(
        folder / CHECKPOINT_FILE, map_location="cpu", weights_only=True
    )
    return state
