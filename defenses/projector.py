"""Serve the projection head's output instead of the backbone's: what the API exposes, as a defence knob.

Bordes, Balestriero, Garrido, Bardes, Vincent, "Guillotine Regularization: Why removing layers is needed
to improve generalization in self-supervised learning" (TMLR 2023): the projector's output is the
least transferable layer of an SSL network, so a provider that serves it instead of the backbone gives
a thief (and an honest user) less that transfers downstream. The defence applies the victim's own
trained head to the backbone features the API computed (``features`` are the backbone's); it needs
the head, so it is built from a victim that kept it (``Victim.head``), not from a registry string.

>>> head = projection_mlp([256, 512, 128]).eval()
>>> ServeProjector(head=head)("alice", torch.zeros(3, 1, 28, 28), torch.randn(3, 256)).shape
torch.Size([3, 128])
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sslaudit.nets.heads import projection_mlp  # noqa: F401 - used by the doctest


@dataclass(frozen=True, eq=False)
class ServeProjector:
    """Answer ``head(features)``: the projection head's output (no state, no randomness)."""

    head: nn.Module

    def __post_init__(self) -> None:
        if not isinstance(self.head, nn.Module):
            raise ValueError("projector head must be a torch module (the victim's Victim.head); this victim "
                             "kept none: train it with the toolkit, which saves the head")
        self.head.eval()

    def out_dim(self, dim: int) -> int:
        last = [m for m in self.head.modules() if isinstance(m, nn.Linear)][-1]
        return last.out_features

    @torch.no_grad()
    def __call__(self, account: str, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        head = self.head.to(features.device)
        return head(features.float()).float()
