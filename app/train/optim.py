"""Precision, optimizer and learning-rate schedule of the training loop."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from app.train.config import TrainConfig

# ---------------------------------------------------------------------------------------------
# Precision, optimizer, schedule


@dataclass(frozen=True)
class Precision:
    autocast_dtype: torch.dtype | None  # None: full fp32
    grad_scaler: bool  # fp16 needs loss scaling, bf16 does not

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """Mixed precision on GPU only: bf16 where the GPU supports it, else fp16 with a scaler."""
    if device.type != "cuda" or requested == "off":
        return Precision(None, False)
    bf16_ok = torch.cuda.is_bf16_supported()
    if requested == "bf16" or (requested == "auto" and bf16_ok):
        return Precision(torch.bfloat16, False)
    return Precision(torch.float16, True)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # No weight decay on norms and biases: standard practice for both architectures.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def lr_at(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based). Computed, not stateful, so a
    resumed run continues the schedule from its global step."""
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total_steps - 1)
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "step":
        return cfg.lr * (0.1 ** sum(step >= total_steps * f for f in (0.5, 0.75)))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * max(0.0, 1 - progress)  # onecycle: linear warm-up, linear decay to zero
