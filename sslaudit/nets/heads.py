"""Projection heads: the MLP an SSL method trains on top of the backbone (and usually discards).

``projection_mlp([in, hidden, ..., out])`` is Linear (no bias) → BatchNorm → ReLU for every hidden layer
and a final Linear with bias: SimCLR's projector (Chen et al., ICML 2020) for three sizes. Its sizes are
stored in the victim's card, so a saved head is rebuilt from the card alone.

>>> head = projection_mlp([256, 512, 128])
>>> head.eval()(torch.randn(4, 256)).shape
torch.Size([4, 128])
"""
from __future__ import annotations

from typing import Sequence

import torch  # noqa: F401 - used by the doctest
from torch import nn


def projection_mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear–BN–ReLU per hidden size, then a plain Linear to ``sizes[-1]``."""
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"a projection head needs at least two positive sizes [in, ..., out]; got {sizes}")
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)
