"""No defence: the API returns the victim's features unchanged (the undefended baseline).

>>> SimulatedAPI(encoder, defenses=[Identity()])  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sslaudit.registry import register_defense
from sslaudit.secret import DeploymentSecret


@register_defense("none")
@dataclass(frozen=True, kw_only=True)
class Identity:
    """Pass features through untouched."""

    def bind(self, secret: DeploymentSecret) -> "Identity":
        """Nothing to key or keep per deployment: the same (stateless) object."""
        return self

    def __call__(self, account: str, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return features
