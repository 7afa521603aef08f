"""Rounding: quantise every returned feature to a grid (output perturbation).

One of the feature-perturbing defences StolenEncoder evaluates against encoder
stealing (Liu, Jia, Liu & Gong, "StolenEncoder: Stealing Pre-trained Encoders
in Self-supervised Learning", ACM CCS 2022, §"Defenses"; reference code
``liu00222/StolenEncoder`` ships no defence code). The notes recall the three
as top-k, rounding and noise [RECALL]; they found them insufficient: rounding
coarse enough to slow the thief also costs honest users accuracy.

Two ways to give the grid, exactly one of them:

* ``decimals=d``: ``v -> round(v, d)``, as StolenEncoder's rounding (absolute
  units: ``decimals=1`` keeps one digit after the point);
* ``step=s`` (default ``0.1``): ``v -> g * round(v / g)`` with ``g = s``
  (``relative=false``) or ``g = s * rms(v)`` (``relative=true``, the default),
  where ``rms(v) = ||v|| / sqrt(d)`` is the row's own root-mean-square value.

Choice [INFER]: the relative grid is scaled by each *row's* RMS, not by the
batch's :func:`~sslaudit.defenses.common.feature_scale` as ``noise`` does.
A deterministic quantiser must give an image the same answer whatever else
shares its batch; a batch-scaled grid would shift with the company an image
keeps, so re-querying it in differently scaled batches yields several
roundings that an attacker can average (dithering) to undo the quantisation.
The row-scaled grid is also scale-invariant: ``2v`` rounds to twice what ``v``
does. A row of zeros stays zeros. Ties round half to even (``torch.round``,
like Python's ``round``). Stateless and deterministic: nothing is random, so no
secret is needed.

>>> Rounding(decimals=1)("alice", torch.zeros(1, 1, 4, 4), torch.tensor([[0.123, -1.26]]))
tensor([[ 0.1000, -1.3000]])
>>> Rounding(step=0.5, relative=False)("alice", torch.zeros(1, 1, 4, 4), torch.tensor([[0.3, 1.7]]))
tensor([[0.5000, 1.5000]])
>>> Rounding(step=0.5, decimals=1)
Traceback (most recent call last):
ValueError: round takes step= or decimals=, not both (e.g. decimals=1, or step=0.5,relative=true)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sslaudit.defenses.common import flag, integer, number
from sslaudit.registry import register_defense
from sslaudit.secret import DeploymentSecret

DEFAULT_STEP = 0.1


@register_defense("round")
@dataclass(kw_only=True)
class Rounding:
    """Quantise features to ``decimals`` digits, or to a grid of ``step`` (× the row's RMS when ``relative``)."""

    step: float | None = None
    decimals: int | None = None
    relative: bool | None = None  # None: True with step; decimals is always absolute

    def __post_init__(self) -> None:
        if self.step is not None and self.decimals is not None:
            raise ValueError("round takes step= or decimals=, not both (e.g. decimals=1, or step=0.5,relative=true)")
        if self.decimals is not None:
            self.decimals = integer("round", "decimals", self.decimals, "decimals=1", minimum=0)
            if self.relative is not None and flag("round", "relative", self.relative):
                raise ValueError("round decimals= rounds absolute values; drop relative=true or pass step=0.1,"
                                 "relative=true instead")
            self.relative = False
            return
        self.step = number("round", "step", DEFAULT_STEP if self.step is None else self.step, "step=0.1",
                           minimum=0.0, strict=True)
        self.relative = True if self.relative is None else flag("round", "relative", self.relative)

    def bind(self, secret: DeploymentSecret) -> "Rounding":
        """Nothing random and no state: the same object serves every deployment."""
        return self

    def __call__(self, account: str, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if self.decimals is not None:
            return torch.round(features, decimals=self.decimals)
        assert self.step is not None
        if not self.relative:
            return self.step * torch.round(features / self.step)
        rms = features.norm(dim=1, keepdim=True) / max(features.shape[1], 1) ** 0.5
        grid = self.step * rms
        safe = torch.where(grid > 0, grid, torch.ones_like(grid))
        return torch.where(grid > 0, safe * torch.round(features / safe), features)
