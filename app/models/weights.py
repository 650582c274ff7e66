"""The plain module behind training wrappers, and its weights as checkpoints want them."""

from __future__ import annotations

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A contiguous CPU copy of the weights, as safetensors and checkpoints want them."""
    return {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}
