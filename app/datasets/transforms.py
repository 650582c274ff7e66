"""Batch transforms: the same code on CPU and GPU, for training, evaluation and serving.

Images stay uint8 (N, C, H, W) until a batch is normalised, so augmentation and normalisation
run per batch on whatever device trains (no per-image Python, no DataLoader workers).
"""

from __future__ import annotations

import functools

import torch

from app.datasets.info import DatasetInfo


@functools.cache
def _channel_stats(info: DatasetInfo, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Built once per device: a host-to-device copy per batch would stall a GPU's queue. Never
    # as inference tensors, whichever caller comes first (serving, then training, say).
    with torch.inference_mode(False):
        mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(info.std, device=device).view(1, -1, 1, 1)
    return mean, std


def normalize(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32, scaled to [0, 1] and standardised per channel."""
    mean, std = _channel_stats(info, images.device)
    return (images.float().div_(255) - mean) / std


def augment(
    images: torch.Tensor, info: DatasetInfo, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, vectorised over the batch.
    Random draws happen on the images' device (or the generator's), so a GPU batch needs no
    copy from the host."""
    n, _, h, w = images.shape
    pad = info.crop_padding
    draw_on = generator.device if generator else images.device
    if pad:
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
        offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=draw_on)
        offsets = offsets.to(images.device)
        rows = (torch.arange(h, device=images.device)[None] + offsets[0, :, None])[:, None, :, None]
        cols = (torch.arange(w, device=images.device)[None] + offsets[1, :, None])[:, None, None, :]
        batch = torch.arange(n, device=images.device)[:, None, None, None]
        channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        images = padded[batch, channels, rows, cols]
    if info.flip:
        flip = torch.rand(n, generator=generator, device=draw_on) < 0.5
        images = torch.where(flip.to(images.device)[:, None, None, None], images.flip(3), images)
    return images
