"""Truncation: the API serves only the first ``dims`` coordinates of each feature vector.

What an embedding API exposes is itself a defence knob. Bordes, Balestriero,
Garrido, Bardes & Vincent ("Guillotine Regularization: Why removing layers is
needed to improve generalization in Self-Supervised Learning", TMLR 2023)
show that how much downstream value an SSL representation carries depends on
where it is cut from the network: the same encoder served at a different depth
transfers very differently. Serving fewer coordinates is the simplest version
of that knob [INFER: the paper studies layers, not coordinate subsets]: a thief
only ever sees (and so can only imitate) the served part, while an honest user
probes the same part. The Dziedzic & Papernot blog post on encoder extraction
lists truncation next to perturbation among active defences that hurt
legitimate users (cited there via StolenEncoder).

Give ``dims`` (a count) or ``fraction`` (of the feature size,
``max(1, round(fraction * d))``), not both; neither means ``fraction=0.5``
[choice]. The served size is :meth:`Truncate.out_dim`, so
``SimulatedAPI(...).dim`` reports it, and a ``dims`` larger than the feature
size is refused when the API is built. The answer is a copy, never a view of
the full features (a view would carry the hidden coordinates in its storage).
Stateless and deterministic (no secret needed).

>>> Truncate(dims=2)("alice", torch.zeros(1, 1, 4, 4), torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
tensor([[1., 2.]])
>>> Truncate(fraction=0.25).out_dim(512)
128
>>> Truncate(dims=0)
Traceback (most recent call last):
ValueError: truncate dims must be an int >= 1 (e.g. dims=128); got 0
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sslaudit.defenses.common import integer, number
from sslaudit.registry import register_defense
from sslaudit.secret import DeploymentSecret

DEFAULT_FRACTION = 0.5


@register_defense("truncate")
@dataclass(kw_only=True)
class Truncate:
    """Serve the first ``dims`` (or ``fraction`` × d) coordinates."""

    dims: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if self.dims is not None and self.fraction is not None:
            raise ValueError("truncate takes dims= or fraction=, not both (e.g. dims=128, or fraction=0.25)")
        if self.dims is not None:
            self.dims = integer("truncate", "dims", self.dims, "dims=128", minimum=1)
        else:
            self.fraction = number("truncate", "fraction",
                                   DEFAULT_FRACTION if self.fraction is None else self.fraction,
                                   "fraction=0.25", minimum=0.0, strict=True, maximum=1.0)

    def out_dim(self, dim: int) -> int:
        """The served size for encoder features of size ``dim``; a ValueError if ``dims`` exceeds it."""
        if self.dims is None:
            assert self.fraction is not None
            return max(1, round(self.fraction * dim))
        if self.dims > dim:
            raise ValueError(f"truncate dims={self.dims} exceeds the feature size {dim}; pass dims<={dim} or "
                             "fraction=")
        return self.dims

    def bind(self, secret: DeploymentSecret) -> "Truncate":
        """Nothing random and no state: the same object serves every deployment."""
        return self

    def __call__(self, account: str, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return features[:, :self.out_dim(features.shape[1])].clone()
