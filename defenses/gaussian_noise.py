"""Additive Gaussian noise on returned features (output perturbation).

The defence studied by Dziedzic et al. (ICML 2022, §"Defenses") and by the
RDA and StolenEncoder papers: v ← v + N(mu, sigma² I). Noise is fresh on every
call (unlike B4B's reference code, which seeds it by batch index so repeats
get identical noise) and each account has its own random stream, so one
account's queries never change what another sees. ``relative=True`` scales
sigma by the mean feature norm of the batch, so one setting means the same
across victims with different feature scales.

>>> api = SimulatedAPI(encoder, defenses=[GaussianNoise(sigma=0.1)])  # doctest: +SKIP
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch

from sslaudit.registry import register_defense


@register_defense("noise")
@dataclass(kw_only=True)
class GaussianNoise:
    """v + N(mu, sigma²); sigma relative to the mean feature norm when ``relative``."""

    sigma: float = 0.1
    mu: float = 0.0
    relative: bool = True
    seed: int = 0
    _streams: dict[str, torch.Generator] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.sigma < 0:
            raise ValueError("sigma must be non-negative")

    def _stream(self, account: str) -> torch.Generator:
        if account not in self._streams:
            self._streams[account] = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(account.encode()))
        return self._streams[account]

    def __call__(self, account: str, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        scale = self.sigma
        if self.relative and len(features):
            scale = scale * features.norm(dim=1).mean().item() / features.shape[1] ** 0.5
        noise = torch.randn(features.shape, generator=self._stream(account)).to(features.device)
        return features + self.mu + scale * noise
