"""Losses shared by victims and attacks: NT-Xent/InfoNCE in its two shapes, and the EMA update.

Every contrastive logit is computed in float32 with autocast switched off:
under bf16 autocast a matmul runs in bf16 whatever its inputs, and with a
temperature of 0.07-0.2 bf16's 8-bit mantissa (relative error ~4e-3 on a
cosine) turns into logit errors of several hundredths, enough to reorder
near-tied negatives.

>>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
>>> float(nt_xent_loss(z1, z1, 0.1)) < float(nt_xent_loss(z1, z2, 0.1))
True
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, TypeVar

import torch
import torch.nn.functional as F
from torch import nn


@contextlib.contextmanager
def full_precision(device: torch.device | str) -> Iterator[None]:
    """Autocast off on ``device``'s type, so the losses' matmuls run in the dtype of their inputs (float32)."""
    device_type = torch.device(device).type
    with torch.autocast(device_type, enabled=False):
        yield


F_ = TypeVar("F_", bound=Callable[..., torch.Tensor])


def float32_logits(loss: F_) -> F_:
    """Decorator: run ``loss`` under :func:`full_precision` on the device of its first tensor argument."""

    @functools.wraps(loss)
    def wrapper(*args: object, **kwargs: object) -> torch.Tensor:
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
        with full_precision(device):
            return loss(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@float32_logits
def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020), also Dziedzic et al.'s InfoNCE for stealing (ICML'22).

    z = [z1; z2] L2-normalised (2N rows); each row must pick its partner p(a) = a ± N among the other 2N − 1:
    L = (1/2N) Σ_a −log( exp(ẑ_a·ẑ_p(a)/τ) / Σ_{k≠a} exp(ẑ_a·ẑ_k/τ) ).
    """
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = len(z1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    partners = torch.cat([torch.arange(n, 2 * n, device=z.device), torch.arange(n, device=z.device)])
    return F.cross_entropy(logits, partners)


@float32_logits
def cross_info_nce_loss(xa: torch.Tensor, xb: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Symmetric cross-view InfoNCE (CLIP/SplitMask shape): x_a[i] must pick x_b[i] among all x_b, and back.

    L = ½ [CE(â b̂ᵀ/τ, i) + CE(b̂ âᵀ/τ, i)], cosine similarities, no same-view negatives.
    """
    a, b = F.normalize(xa.float(), dim=1), F.normalize(xb.float(), dim=1)
    logits = a @ b.T / temperature
    labels = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: θ_t ← m·θ_t + (1 − m)·θ_s for every parameter (MoCo's key encoder, DINO's teacher)."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
