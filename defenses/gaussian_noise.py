"""Additive Gaussian noise on returned features (output perturbation).

The defence studied by Dziedzic et al. (ICML 2022, §"Defenses") and by the
RDA and StolenEncoder papers: v ← v + N(mu, sigma² I). Noise is fresh on every
call (unlike B4B's reference code, which seeds it by batch index so repeats
get identical noise) and each account has its own random stream, so one
account's queries never change what another sees. ``relative=True`` scales
sigma by the mean feature norm of the batch, so one setting means the same
across victims with different feature scales.

The streams are keyed by a :class:`~sslaudit.secret.DeploymentSecret`, never
a public seed: an attacker who knows this code, the settings and their account
name still cannot regenerate the noise. A :class:`SimulatedAPI` calls
:meth:`GaussianNoise.bind` with its own secret and serves the returned copy,
so one instance given to two APIs shares no stream (and no secret) between
them. ``secret=`` pins the secret (e.g. ``DeploymentSecret.fixed("run-1")``
for a reproducible run); left ``None``, an unbound instance draws its own
(:meth:`DeploymentSecret.from_env`) at first use.

>>> noise = GaussianNoise(sigma=0.5)
>>> noise("alice", torch.zeros(2, 1, 4, 4), torch.ones(2, 8)).shape
torch.Size([2, 8])
>>> GaussianNoise(sigma="abc")
Traceback (most recent call last):
ValueError: noise sigma must be a finite number >= 0 (e.g. sigma=0.1); got 'abc'
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

import torch

from sslaudit.defenses.common import number
from sslaudit.registry import register_defense
from sslaudit.secret import DeploymentSecret

PURPOSE = "gaussian-noise"
_DRAW = threading.Lock()  # the API runs defences outside its metering lock, possibly concurrently


@register_defense("noise")
@dataclass(kw_only=True)
class GaussianNoise:
    """v + N(mu, sigma²); sigma relative to the mean feature norm when ``relative``."""

    sigma: float = 0.1
    mu: float = 0.0
    relative: bool = True
    secret: DeploymentSecret | None = None
    _own: DeploymentSecret | None = field(default=None, init=False, repr=False, compare=False)
    _streams: dict[str, torch.Generator] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.sigma = number("noise", "sigma", self.sigma, "sigma=0.1", minimum=0.0)
        self.mu = number("noise", "mu", self.mu, "mu=0")
        if not isinstance(self.relative, bool):
            raise ValueError(f"noise relative must be true or false; got {self.relative!r}")
        if self.secret is not None and not isinstance(self.secret, DeploymentSecret):
            raise ValueError("noise secret must be a DeploymentSecret (or None for the API's own)")

    def bind(self, secret: DeploymentSecret) -> "GaussianNoise":
        """A fresh copy for one deployment: no streams yet, keyed by ``self.secret`` or else ``secret``."""
        return replace(self, secret=self.secret if self.secret is not None else secret)

    def _stream(self, account: str) -> torch.Generator:
        if account not in self._streams:
            if self.secret is None and self._own is None:
                self._own = DeploymentSecret.from_env()
            secret = self.secret if self.secret is not None else self._own
            assert secret is not None
            self._streams[account] = secret.generator(PURPOSE, account)
        return self._streams[account]

    def __call__(self, account: str, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        scale = self.sigma
        if self.relative and len(features):
            scale = scale * features.norm(dim=1).mean().item() / features.shape[1] ** 0.5
        with _DRAW:  # module-level, so an instance stays picklable
            noise = torch.randn(features.shape, generator=self._stream(account))
        return features + self.mu + scale * noise.to(features.device)
