"""What every attack shares: choosing queries from a pool, sending them, and its result.

Queries are nested prefixes of one seeded permutation of the pool, so the
first 500 queries of a 5,000-query run are exactly the 500-query run. A budget
larger than the pool is filled with augmented copies of pool images; each
copy is sent, so each counts as a query.

>>> images = choose_queries(pool, 5000, seed=0)  # doctest: +SKIP
>>> answers = query_all(api, images, account="thief")  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sslaudit.api import RepresentationAPI
from sslaudit.augment import AugmentConfig, augment
from sslaudit.data import ImageData
from sslaudit.models import Encoder
from sslaudit.train import History

# Mild augmentation for padding a small pool: the copies stay recognisable.
POOL_COPY_AUGMENT = AugmentConfig(crop_scale=(0.5, 1.0), jitter_p=0.5, brightness=0.3, contrast=0.3)


@dataclass
class AttackResult:
    """A stolen encoder with the queries that bought it and how it was trained."""

    encoder: Encoder
    queries: int
    cost: float
    history: History
    account: str
    extra: dict = field(default_factory=dict)


def choose_queries(pool: ImageData, budget: int, seed: int = 0) -> torch.Tensor:
    """``budget`` float images from ``pool`` (nested prefixes of one seeded order)."""
    if budget < 1:
        raise ValueError("budget must be a positive number of queries")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pool), generator=gen)
    images = pool.images[order[:budget]].float().div_(255)
    if budget <= len(pool):
        return images
    copies, base = [], pool.images[order].float().div_(255)
    while len(images) + sum(len(c) for c in copies) < budget:
        copies.append(augment(base, POOL_COPY_AUGMENT, gen))
    return torch.cat([images, *copies])[:budget]


def query_all(api: RepresentationAPI, images: torch.Tensor, account: str, batch_size: int = 1000) -> torch.Tensor:
    """Send ``images`` in batches and return the API's answers (one query per image)."""
    answers = [api.query(images[i : i + batch_size], account=account) for i in range(0, len(images), batch_size)]
    return torch.cat(answers)
