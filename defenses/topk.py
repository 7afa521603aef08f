"""Top-k sparsification: serve only the k largest-magnitude coordinates of each feature vector.

One of the feature-perturbing defences StolenEncoder evaluates against encoder
stealing (Liu, Jia, Liu & Gong, "StolenEncoder: Stealing Pre-trained Encoders
in Self-supervised Learning", ACM CCS 2022, §"Defenses"; reference code
``liu00222/StolenEncoder`` ships no defence code). The notes recall the three
as top-k, rounding and noise [RECALL], all found insufficient against the
thief at a tolerable cost to honest users.

Each row keeps its ``k`` coordinates of largest ``|v_i|`` (with their signs)
and has the others set to 0; the served size is unchanged. Give ``k`` (a count)
or ``fraction`` (of the feature size, ``k = max(1, round(fraction * d))``),
not both; neither means ``fraction=0.1`` [choice: StolenEncoder sweeps k, the
default only has to be a visible perturbation]. A ``k`` larger than the
feature size is refused when the API is built (:meth:`TopK.out_dim`), not at
the first query. Stateless and deterministic per row (no secret needed); ties
in magnitude are broken by ``torch.topk``.

>>> TopK(k=2)("alice", torch.zeros(1, 1, 4, 4), torch.tensor([[0.5, -3.0, 1.0, 2.0]]))
tensor([[ 0., -3.,  0.,  2.]])
>>> TopK(k=2, fraction=0.5)
Traceback (most recent call last):
ValueError: topk takes k= or fraction=, not both (e.g. k=64, or fraction=0.1)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sslaudit.defenses.common import integer, number
from sslaudit.registry import register_defense
from sslaudit.secret import DeploymentSecret

DEFAULT_FRACTION = 0.1


@register_defense("topk")
@dataclass(kw_only=True)
class TopK:
    """Keep the ``k`` (or ``fraction`` × d) largest-magnitude coordinates of each row, zero the rest."""

    k: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if self.k is not None and self.fraction is not None:
            raise ValueError("topk takes k= or fraction=, not both (e.g. k=64, or fraction=0.1)")
        if self.k is not None:
            self.k = integer("topk", "k", self.k, "k=64", minimum=1)
        else:
            self.fraction = number("topk", "fraction", DEFAULT_FRACTION if self.fraction is None else self.fraction,
                                   "fraction=0.1", minimum=0.0, strict=True, maximum=1.0)

    def kept(self, dim: int) -> int:
        """How many coordinates a row of ``dim`` features keeps; a ValueError if ``k`` exceeds ``dim``."""
        if self.k is None:
            assert self.fraction is not None
            return max(1, round(self.fraction * dim))
        if self.k > dim:
            raise ValueError(f"topk k={self.k} exceeds the feature size {dim}; pass k<={dim} or fraction=")
        return self.k

    def out_dim(self, dim: int) -> int:
        """The served size is unchanged; checks ``k`` against it when the API is built."""
        self.kept(dim)
        return dim

    def bind(self, secret: DeploymentSecret) -> "TopK":
        """Nothing random and no state: the same object serves every deployment."""
        return self

    def __call__(self, account: str, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if not features.shape[0]:
            return features.clone()
        index = features.abs().topk(self.kept(features.shape[1]), dim=1).indices
        return torch.zeros_like(features).scatter_(1, index, features.gather(1, index))
