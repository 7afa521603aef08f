"""Coverage-capped sybils: each account queries one tight cluster of the pool, so its coverage stays low.

An adaptive attack on B4B (Dubiński, Pawlak, Boenisch, Trzciński, Dziedzic, "Bucks for Buckets (B4B)",
NeurIPS 2023; code stapaw/b4b-active-encoder-defense): B4B raises an account's noise with the share of
LSH buckets its answers have hit (σ(c) grows exponentially with the coverage c), and answers each
account through its own transformation. The notes' "cluster / LSH-aware subset selection to keep
coverage low" (defenses.md §7, attacks.md §10.4), built on the B4B sybil attack
(:class:`~sslaudit.attacks.sybil.SybilAttack`, whose anchors, budget split, ridge maps, curves and
ledgers this class inherits; only the choice of which account sends which image changes):

1. the images a ``sybil`` attack of this budget would send are the same; the shared ``anchors`` go to
   every account, as there;
2. the rest is clustered into K = ``accounts`` groups of exactly the sizes the sybil split gives each
   account (balanced k-means: k-means++ seeds, Lloyd steps whose assignment fills the nearest cluster
   with room, closest points first), and account k sends group k. Each account's answers then lie in
   one region of embedding space and hit few buckets;
3. each account's answers are mapped into account 1's space by the sybil attack's ridge affine map
   fitted on the anchors (:func:`~sslaudit.attacks.sybil.fit_affine_map`), merged, and the inner attack
   trains.

Clustering space (our choice): pixels average-pooled to 8 × 8 per channel. The attacker has no victim
features before buying; a random-init encoder's features are a random nonlinear projection of the same
pixels and add compute without knowledge of the victim's geometry, whereas images close in (low-pass)
pixel space are close under any smooth encoder, and pooling discards the pixel noise that does not
move the features. The anchors still spread over the whole pool, so they add about ``anchors`` buckets
to every account's coverage: keep them few (default 2 % of the budget per account, 16 % of it over the 8
accounts; B4B's own sybil test used 10,000).

Measured (the project's ``b4b`` coverage, a BatchNorm-calibrated random convnet victim, FMNIST train
pool, 8 accounts × 1,000 queries): mean per-account coverage 10.8 % with the sybil split, 9.3 % here,
but the highest 12.0 % vs 11.2 %; clustering on the victim's own features (an oracle) did no better
(8.6 %, highest 12.1 %), nor did spherical k-means. On a synthetic pool of 8 kinds of image each account
hit half the SimHash buckets. The lever against coverage is the number of accounts (and the ``average``
attack's nudge views); the grouping adds little where the pool has little cluster structure.
``extra["cluster_spread"]``: the mean distance of a group's
images to their centre over the mean distance of all of them to the overall centre (1: no grouping).

>>> x = torch.cat([torch.zeros(3, 2), torch.ones(3, 2)])
>>> balanced_clusters(x, [3, 3], seed=0).tolist() in ([0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0])
True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from sslaudit.attacks.sybil import SybilAttack
from sslaudit.registry import register_attack


def pixel_features(images: torch.Tensor, side: int = 8) -> torch.Tensor:
    """Images (N, C, H, W) average-pooled to ``side`` × ``side`` per channel, flattened (float64)."""
    return F.adaptive_avg_pool2d(images.float(), side).flatten(1).double()


def fill_nearest(dist: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Labels giving cluster k exactly ``sizes[k]`` rows: each round, every unassigned row asks for its
    nearest cluster with room, and each cluster takes the closest askers it has room for."""
    labels = torch.full((len(dist),), -1, dtype=torch.long)
    room = torch.tensor(list(sizes))
    while (labels < 0).any():
        free = (labels < 0).nonzero().flatten()
        open_ = (room > 0).nonzero().flatten()
        wish = open_[dist[free][:, open_].argmin(1)]
        for k in wish.unique().tolist():
            askers = free[wish == k]
            take = askers[dist[askers, k].argsort()[: int(room[k])]]
            labels[take] = k
            room[k] -= len(take)
    return labels


def balanced_clusters(x: torch.Tensor, sizes: Sequence[int], seed: int = 0, steps: int = 10) -> torch.Tensor:
    """Balanced k-means of the rows of ``x`` into ``len(sizes)`` groups of exactly ``sizes`` rows."""
    if sum(sizes) != len(x) or min(sizes) < 0:
        raise ValueError(f"cluster sizes {list(sizes)} must be >= 0 and sum to the {len(x)} rows")
    x = x.double()
    gen = torch.Generator().manual_seed(seed)
    centres = x[torch.randint(len(x), (1,), generator=gen)]
    while len(centres) < len(sizes):  # k-means++: the next seed drawn in proportion to its squared distance
        d2 = torch.cdist(x, centres).min(1).values.pow(2)
        pick = torch.multinomial(d2 / d2.sum() if d2.sum() > 0 else torch.ones_like(d2), 1, generator=gen)
        centres = torch.cat([centres, x[pick]])
    labels = fill_nearest(torch.cdist(x, centres), sizes)
    for _ in range(steps):
        centres = torch.stack([x[labels == k].mean(0) if (labels == k).any() else centres[k]
                               for k in range(len(sizes))])
        new = fill_nearest(torch.cdist(x, centres), sizes)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def cluster_spread(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean distance to the own group's centre over the mean distance to the overall centre."""
    x = x.double()
    centres = x.new_zeros(int(labels.max()) + 1, x.shape[1])
    for k in labels.unique().tolist():  # a group may be empty when the budget leaves fewer images than accounts
        centres[k] = x[labels == k].mean(0)
    within = (x - centres[labels]).norm(dim=1).mean()
    return float(within / (x - x.mean(0)).norm(dim=1).mean().clamp_min(1e-300))


@register_attack("coverage-sybil")
@dataclass(kw_only=True)
class CoverageSybil(SybilAttack):
    """A sybil attack whose accounts each query one balanced k-means cluster of the pool (low coverage)."""

    accounts: int = 8
    anchor_fraction: float = 0.02

    def assign(self, rest: torch.Tensor, sizes: list[int], seed: int) -> tuple[list[torch.Tensor], dict]:
        """Account k sends the k-th balanced k-means cluster (exactly ``sizes[k]`` images) of the pool."""
        features = pixel_features(rest)
        labels = balanced_clusters(features, sizes, seed)
        return [rest[labels == k] for k in range(len(sizes))], {"cluster_spread": cluster_spread(features, labels)}
