"""B4B's coverage estimator: the share of LSH buckets an account's answers have landed in, online, per account.

From "Bucks for Buckets (B4B): Active Defenses Against Stealing Encoders" (Dubiński, Pawlak, Boenisch,
Trzciński, Dziedzic; NeurIPS 2023; reference code stapaw/b4b-active-encoder-defense,
``end2end-stealing/buckets.py``): ``projections`` = 20 independent SimHash projections of ``hyperplanes``
= 12 random Gaussian hyperplanes each, so 2^12 = 4,096 buckets per projection; an account's coverage is the
mean over projections of (buckets hit by any of its queries so far) / 4,096, in percent. A thief spreading
queries over the data manifold covers many buckets; a user solving one task stays in a few.

Where this differs from the reference, and why:

- The reference hashes the raw features, ``sign(v @ P)``. Through the origin, hyperplanes barely cut a
  post-ReLU cloud (all coordinates >= 0), so most buckets are unreachable and coverage saturates low. The
  hyperplanes here pass through the provider's feature centre: ``sign((v - centre) @ P)``, with ``centre``
  the mean of the clean features given to :meth:`BucketCoverage.calibrate` (``centred=False`` restores the
  reference; ``bench/coverage.py`` measures both).
- The reference precomputes coverage offline along the attacker's query order; here it is online: each
  :meth:`BucketCoverage.add` hashes a batch (vectorised, no loop over images) and sets its bits in the
  account's boolean table (projections × 2^hyperplanes) under that account's lock (:class:`PerAccount`),
  so concurrent calls never lose an update and no account sees another's table.
- The projections are drawn from the deployment secret (one set per deployment, shared by its accounts,
  unknown to the attacker), not ``np.random``: an attacker who knew them could pick queries in few buckets.

>>> from sslaudit.secret import DeploymentSecret
>>> cov = BucketCoverage().bind(DeploymentSecret.fixed("doc"))
>>> cov.calibrate(torch.randn(500, 16))
>>> cov.coverage("alice")
0.0
>>> 0 < cov.add("alice", torch.randn(100, 16)) <= 100 * 100 / 4096
True
>>> cov.coverage("bob")
0.0
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Callable, TypeVar

import torch

from sslaudit.defenses.common import PerAccount, flag, integer
from sslaudit.secret import DeploymentSecret

PURPOSE = "b4b-coverage"
R = TypeVar("R")


@dataclass(kw_only=True)
class BucketCoverage:
    """Per-account LSH bucket coverage (%) over ``projections`` hashes of ``hyperplanes`` bits each."""

    hyperplanes: int = 12
    projections: int = 20
    centred: bool = True
    secret: DeploymentSecret | None = None
    _centre: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _planes: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _tables: PerAccount[torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.hyperplanes = integer("b4b", "hyperplanes", self.hyperplanes, "hyperplanes=12")
        if self.hyperplanes > 24:
            raise ValueError(f"b4b hyperplanes must be <= 24 (2^hyperplanes buckets per table; e.g. hyperplanes=12); "
                             f"got {self.hyperplanes}")
        self.projections = integer("b4b", "projections", self.projections, "projections=20")
        self.centred = flag("b4b", "centred", self.centred)
        if self.secret is not None and not isinstance(self.secret, DeploymentSecret):
            raise ValueError("b4b secret must be a DeploymentSecret (or None for the API's own)")
        self._tables = PerAccount(self._empty)

    @property
    def buckets(self) -> int:
        """Buckets per projection: 2^hyperplanes."""
        return 1 << self.hyperplanes

    def _empty(self) -> torch.Tensor:
        return torch.zeros(self.projections * self.buckets, dtype=torch.bool)

    def bind(self, secret: DeploymentSecret) -> "BucketCoverage":
        """A fresh copy for one deployment (no accounts, no centre), keyed by ``self.secret`` or else ``secret``."""
        return replace(self, secret=self.secret if self.secret is not None else secret)

    def calibrate(self, features: torch.Tensor) -> None:
        """Centre the hyperplanes on the mean of the provider's clean ``features`` (N, d)."""
        if features.ndim != 2 or not len(features):
            raise ValueError(f"b4b calibration needs clean features of shape (N, d), N >= 1; "
                             f"got {tuple(features.shape)}")
        self._centre = features.detach().float().mean(dim=0).cpu()

    def _projection(self, dim: int) -> torch.Tensor:
        """The deployment's (dim, projections × hyperplanes) Gaussian matrix, drawn once from the secret."""
        with self._lock:
            if self._planes is None:
                if self.secret is None:
                    self.secret = DeploymentSecret.from_env()
                gen = self.secret.generator(PURPOSE, "")  # deployment-wide: the same for every account
                self._planes = torch.randn(dim, self.projections * self.hyperplanes, generator=gen)
            if self._planes.shape[0] != dim:
                raise ValueError(f"b4b coverage was set up for {self._planes.shape[0]}-d features; got {dim}-d")
            return self._planes

    def codes(self, features: torch.Tensor) -> torch.Tensor:
        """Bucket ids (N, projections), int64 in [0, 2^hyperplanes): sign bits of ``(v − centre) @ P``."""
        if features.ndim != 2:
            raise ValueError(f"b4b coverage needs features of shape (N, d); got {tuple(features.shape)}")
        planes = self._projection(features.shape[1]).to(features.device)
        x = features.detach().float()
        if self.centred:
            if self._centre is None:
                raise RuntimeError("b4b coverage is centred on the provider's features: call calibrate(features) "
                                   "first (SimulatedAPI(calibration=images) does), or pass centred=False")
            x = x - self._centre.to(x.device)
        bits = (x @ planes > 0).reshape(len(x), self.projections, self.hyperplanes).long()
        weights = 1 << torch.arange(self.hyperplanes, device=bits.device)
        return (bits * weights).sum(dim=2).cpu()

    def add(self, account: str, features: torch.Tensor, then: Callable[[float], R] | None = None) -> float | R:
        """Record ``features`` for ``account``; its coverage (%) afterwards, or ``then(coverage)`` run under
        the account's lock (so a caller's own per-account bookkeeping stays in step with the table)."""
        flat = (self.codes(features) + torch.arange(self.projections) * self.buckets).flatten()
        assert self._tables is not None

        def update(table: torch.Tensor) -> float | R:
            table[flat] = True
            value = self._percent(table)
            return value if then is None else then(value)

        return self._tables.update(account, update)

    def _percent(self, table: torch.Tensor) -> float:
        return 100.0 * table.sum().item() / table.numel()

    def coverage(self, account: str) -> float:
        """``account``'s coverage in percent (0 if it never queried; creates nothing)."""
        assert self._tables is not None
        table = self._tables.peek(account)
        return 0.0 if table is None else self._percent(table)

    def table(self, account: str) -> torch.Tensor:
        """A copy of ``account``'s occupancy table (projections, 2^hyperplanes); all False if it never queried."""
        assert self._tables is not None
        table = self._tables.peek(account)
        table = self._empty() if table is None else table.clone()
        return table.view(self.projections, self.buckets)
