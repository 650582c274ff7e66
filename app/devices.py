"""Which device a process computes on."""

from __future__ import annotations

import torch


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
