"""B4B, Bucks for Buckets: noise that grows with how much of the feature space an account has covered.

From "Bucks for Buckets (B4B): Active Defenses Against Stealing Encoders" (Dubiński, Pawlak, Boenisch,
Trzciński, Dziedzic; NeurIPS 2023; reference code stapaw/b4b-active-encoder-defense,
``end2end-stealing/steal_model.py::get_stdev``, ``src/transforms``). For each answered batch:

1. coverage ``c`` (%): the share of LSH buckets hit by all of the account's queries so far, this batch
   included (:class:`~sslaudit.defenses.coverage.BucketCoverage`, on the raw features);
2. ``v + σ z`` with ``σ(c) = max(λ (exp(ln(α/λ) c / β) − 1), 0)``: 0 at no coverage, ``α − λ`` at
   ``c = β``, exponential in between, so a one-task user gets almost nothing and a thief ever more;
3. the account's own fixed transform (``transform``: :class:`~sslaudit.defenses.transforms.AccountTransform`
   of that kind, keyed by the same secret; ``none`` skips it), so sybil accounts' answers do not line up.

Choices, and why:

- Defaults λ = 1e-7, α = 1, β = 80 are the reference's shipped end-to-end scripts (the preset its reported
  runs used); its argparse defaults are λ = 1e-6, α = 0.8, β = 80.
- ``relative=True``: σ is in units of the victim's feature scale (RMS feature value of the calibration
  features, :func:`~sslaudit.defenses.common.feature_scale`), because the reference's σ is absolute and
  was tuned on SimSiam features multiplied by 1000; ``relative=False`` adds ``σ(c)`` as is.
- The coverage used for a batch is the one after adding that batch's buckets: a single huge first batch
  is priced at the coverage it reaches, not at 0 (the reference indexes precomputed coverage by batch).
- Online and per account (the reference precomputes coverage offline and seeds noise by batch index).
  The same (account, image) always gets the same answer: the noise direction ``z`` is drawn from
  ``secret.generator("b4b", account, image)`` (keyed by the deployment secret and the image bytes), and
  the σ an image gets is the one at its first query (remembered per account, keyed by that seed), so
  re-asking an image, later or twice in one batch, returns the same vector and cannot average noise away.
  The memory is one entry per distinct image an account sent; σ is capped at ``SIGMA_MAX``.

Measured limit (``bench/coverage.py`` on the shipped tiny SimCLR victim): coverage tells breadth, not
intent. An honest user of the full FMNIST task covers what a thief with FMNIST images covers at the same
count (34 % at 5,000) and more later (75 % at 65,000: σ ≈ 0.33 under the default preset, ~3,500× the
5,000-query thief's); only narrow users (one class, digits: 3 %) stay cheap, and so would a thief
querying digits.

>>> from sslaudit.secret import DeploymentSecret
>>> b4b = B4B(transform="none").bind(DeploymentSecret.fixed("doc"))
>>> b4b.calibrate(torch.randn(500, 16))
>>> out = b4b("alice", torch.rand(4, 1, 8, 8), torch.randn(4, 16))
>>> out.shape, 0 < b4b.coverage("alice") < 1, b4b.coverage("bob")
(torch.Size([4, 16]), True, 0.0)
>>> round(penalty(80.0, lam=1e-7, alpha=1.0, beta=80.0), 6)
1.0
>>> B4B(beta=0)
Traceback (most recent call last):
ValueError: b4b beta must be a finite number > 0 (e.g. beta=80); got 0
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from sslaudit.defenses.common import PerAccount, choice, feature_scale, flag, number
from sslaudit.defenses.coverage import BucketCoverage
from sslaudit.defenses.transforms import AccountTransform
from sslaudit.registry import register_defense
from sslaudit.secret import DeploymentSecret

PURPOSE = "b4b"
SIGMA_MAX = 1e6  # σ(c) beyond this (in feature-scale units) is pure noise anyway; keeps answers finite
TRANSFORMS = ("none", "affine", "pad_shuffle", "affine_pad_shuffle", "binary", "full_affine")
TransformKind = Literal["none", "affine", "pad_shuffle", "affine_pad_shuffle", "binary", "full_affine"]


def penalty(coverage: float, *, lam: float, alpha: float, beta: float) -> float:
    """B4B's σ(c) = max(λ (exp(ln(α/λ) c / β) − 1), 0) for coverage ``c`` in percent, capped at SIGMA_MAX."""
    exponent = math.log(alpha / lam) * coverage / beta
    if exponent > math.log(SIGMA_MAX / lam + 1):
        return SIGMA_MAX
    return max(lam * (math.exp(exponent) - 1), 0.0)


@register_defense("b4b")
@dataclass(kw_only=True)
class B4B:
    """Coverage-priced Gaussian noise, then a per-account transform (see the module docstring)."""

    lam: float = 1e-7
    alpha: float = 1.0
    beta: float = 80.0
    relative: bool = True
    transform: TransformKind = "affine"
    hyperplanes: int = 12
    projections: int = 20
    centred: bool = True
    secret: DeploymentSecret | None = None
    _coverage: BucketCoverage = field(init=False, repr=False, compare=False)
    _transform: AccountTransform | None = field(init=False, repr=False, compare=False)
    _sigmas: PerAccount[dict[int, float]] = field(default_factory=lambda: PerAccount(dict), init=False,
                                                  repr=False, compare=False)
    _scale: float | None = field(default=None, init=False, repr=False, compare=False)
    _own: DeploymentSecret = field(default_factory=DeploymentSecret.from_env, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.lam = number("b4b", "lam", self.lam, "lam=1e-7", minimum=0.0, strict=True)
        self.alpha = number("b4b", "alpha", self.alpha, "alpha=1", minimum=0.0, strict=True)
        if self.alpha <= self.lam:
            raise ValueError(f"b4b alpha must exceed lam (the noise at coverage beta is alpha - lam; e.g. alpha=1, "
                             f"lam=1e-7); got alpha={self.alpha:g}, lam={self.lam:g}")
        self.beta = number("b4b", "beta", self.beta, "beta=80", minimum=0.0, strict=True)
        self.relative = flag("b4b", "relative", self.relative)
        self.transform = choice("b4b", "transform", self.transform, TRANSFORMS)  # type: ignore[assignment]
        if self.secret is not None and not isinstance(self.secret, DeploymentSecret):
            raise ValueError("b4b secret must be a DeploymentSecret (or None for the API's own)")
        self._coverage = BucketCoverage(hyperplanes=self.hyperplanes, projections=self.projections,
                                        centred=self.centred, secret=self._key)
        self.hyperplanes, self.projections = self._coverage.hyperplanes, self._coverage.projections
        self._transform = None if self.transform == "none" else AccountTransform(kind=self.transform,
                                                                                   secret=self._key)

    @property
    def _key(self) -> DeploymentSecret:
        """``secret`` if given, else this instance's own (random unless $SSLAUDIT_SECRET is set)."""
        return self.secret if self.secret is not None else self._own

    def bind(self, secret: DeploymentSecret) -> "B4B":
        """A fresh copy for one deployment (no accounts, uncalibrated), keyed by ``self.secret`` or else ``secret``."""
        return replace(self, secret=self.secret if self.secret is not None else secret)

    def calibrate(self, features: torch.Tensor) -> None:
        """The provider's clean features: the hyperplanes' centre and (``relative``) the feature scale."""
        self._coverage.calibrate(features)
        self._scale = feature_scale(features) if self.relative else 1.0
        if self._scale <= 0:
            raise ValueError("b4b calibration features are all zero: pass the encoder's features of real images")

    def out_dim(self, dim: int) -> int:
        """The served feature size: the transform's (pad and binary ones change it)."""
        return dim if self._transform is None else self._transform.out_dim(dim)

    def penalty(self, coverage: float) -> float:
        """σ(coverage) in feature-scale units (``relative``) or absolute ones."""
        return penalty(coverage, lam=self.lam, alpha=self.alpha, beta=self.beta)

    def coverage(self, account: str) -> float:
        """``account``'s coverage so far (%); 0 if it never queried."""
        return self._coverage.coverage(account)

    def sigma(self, account: str) -> float:
        """The absolute noise σ a new image from ``account`` would get now (at its current coverage)."""
        return self.penalty(self.coverage(account)) * (self._scale if self._scale is not None else 1.0)

    def telemetry(self, account: str) -> dict[str, float]:
        """What the audit reports of ``account``: its coverage (%) and the σ a new image would get now."""
        return {"coverage_pct": round(self.coverage(account), 3), "sigma": self.sigma(account)}

    def __call__(self, account: str, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if self._scale is None:
            raise RuntimeError("b4b needs the provider's clean features first: SimulatedAPI(calibration=images) "
                               "or defence.calibrate(features)")
        host = images.detach().to("cpu", torch.float32)
        seeds = [self._key.seed(PURPOSE, account, image) for image in host]
        sigmas = self._coverage.add(account, features, then=lambda c: self._assign(account, seeds, c))
        noise = torch.empty(features.shape, dtype=torch.float32)
        gen = torch.Generator()  # one per call: generators are not thread-safe
        for row, seed in zip(noise, seeds):
            torch.randn(features.shape[1], generator=gen.manual_seed(seed), out=row)
        scale = torch.tensor(sigmas, dtype=torch.float32).mul_(self._scale).unsqueeze(1)
        noised = features + (scale * noise).to(features.device, features.dtype)
        return noised if self._transform is None else self._transform.apply(account, noised)

    def _assign(self, account: str, seeds: list[int], coverage: float) -> list[float]:
        """Each image's σ: the one it got at its first query, else σ(coverage) now (under the account lock)."""
        sigma = self.penalty(coverage)
        return self._sigmas.update(account, lambda known: [known.setdefault(s, sigma) for s in seeds])
