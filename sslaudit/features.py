"""Batched feature extraction from an encoder, in eval mode and without gradients.

>>> feats = embed(encoder, data.images)  # (N, dim) float32 on the CPU  # doctest: +SKIP
"""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from sslaudit.device import autocast, fast_layout, pick_device


@torch.no_grad()
def embed(encoder: nn.Module, images: torch.Tensor, batch_size: int = 1024,
          device: torch.device | None = None, mixed_precision: bool = True, progress: bool = False,
          desc: str = "embed") -> torch.Tensor:
    """Features of ``images`` (uint8 in ``[0, 255]`` or float in ``[0, 1]``) as float32 on the CPU."""
    device = device or pick_device()
    was_training = encoder.training
    fast_layout(encoder.eval().to(device))
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False,
                      unit="batch"):
        batch = images[start : start + batch_size].to(device)
        batch = batch.float().div_(255) if batch.dtype == torch.uint8 else batch.float()
        with autocast(device, enabled=mixed_precision):
            out.append(encoder(batch).float().cpu())
    encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0)
