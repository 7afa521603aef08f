"""What every attack shares: choosing queries, buying answers once, and training on a prefix of them.

Queries are nested prefixes of one seeded permutation of the pool, so the
first 500 queries of a 5,000-query run are exactly the 500-query run. A budget
larger than the pool is filled with augmented copies of pool images; each
copy is sent, so each counts as a query.

An attack is split into ``buy`` (the only step that talks to the API) and
``fit`` (trains on what was bought, no API access). ``run_curve`` buys the
largest budget once and fits one stolen encoder per budget on nested prefixes
of the purchase, which is what a real attacker drawing a queries→quality curve
would pay for.

>>> result = DirectExtraction(loss="mse").run(api, pool, budget=5000)  # doctest: +SKIP
>>> results = DirectExtraction(loss="mse").run_curve(api, pool, [500, 1000, 5000])  # doctest: +SKIP
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch
from torch import nn

from sslaudit.api import RepresentationAPI
from sslaudit.augment import AugmentConfig, augment
from sslaudit.data import ImageData
from sslaudit.models import Encoder, InputSpec, build_encoder
from sslaudit.train import History, TrainConfig

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


@dataclass
class Purchase:
    """What an attack bought: ``images`` (N, float in [0, 1]) and one target row per image.

    ``queries_per_image`` images were sent per row (RDA sends M views of each image), so the
    purchase is worth ``len(images) * queries_per_image`` queries. ``pool_rest`` holds the
    pool images never sent (for zero-query extensions such as self-training).
    """

    images: torch.Tensor
    answers: torch.Tensor
    account: str
    price_per_query: float = 0.0
    queries_per_image: int = 1
    pool_rest: torch.Tensor | None = None

    @property
    def queries(self) -> int:
        return len(self.images) * self.queries_per_image

    @property
    def cost(self) -> float:
        return self.queries * self.price_per_query

    def prefix(self, queries: int) -> "Purchase":
        """The purchase of the first ``queries`` queries (whole images only)."""
        n = queries // self.queries_per_image
        if not 1 <= n <= len(self.images):
            raise ValueError(f"a prefix of {queries} queries needs 1..{self.queries} bought queries")
        rest = [self.images[n:]] + ([self.pool_rest] if self.pool_rest is not None else [])
        return replace(self, images=self.images[:n], answers=self.answers[:n], pool_rest=torch.cat(rest))


def choose_queries(pool: ImageData, budget: int, seed: int = 0) -> torch.Tensor:
    """``budget`` float images from ``pool`` (nested prefixes of one seeded order)."""
    return ordered_pool(pool, budget, seed)[0]


def ordered_pool(pool: ImageData, budget: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the first ``budget`` images of the seeded order, padded with copies; the pool images left over)."""
    if budget < 1:
        raise ValueError("budget must be a positive number of queries")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pool), generator=gen)
    base = pool.images[order].float().div_(255)
    if budget <= len(pool):
        return base[:budget], base[budget:]
    copies = []
    while len(base) + sum(len(c) for c in copies) < budget:
        copies.append(augment(base, POOL_COPY_AUGMENT, gen))
    return torch.cat([base, *copies])[:budget], base[:0]


def query_all(api: RepresentationAPI, images: torch.Tensor, account: str, batch_size: int = 1000) -> torch.Tensor:
    """Send ``images`` in batches and return the API's answers (one query per image)."""
    answers = [api.query(images[i : i + batch_size], account=account) for i in range(0, len(images), batch_size)]
    return torch.cat(answers)


def build_stolen(arch: str | None, spec: InputSpec, dim: int) -> tuple[Encoder, nn.Module]:
    """The attacker's encoder (default: the tiny convnet) and a linear map to the API's ``dim`` if sizes differ."""
    encoder = build_encoder(arch or "convnet", spec)
    head = nn.Identity() if encoder.dim == dim else nn.Linear(encoder.dim, dim)
    return encoder, head


def batch_config(train: TrainConfig, n: int, seed: int, **changes: object) -> TrainConfig:
    """``train`` with ``seed``, and a batch no larger than the ``n`` samples bought."""
    return replace(train, seed=seed, batch_size=min(train.batch_size, n), **changes)


@dataclass(kw_only=True)
class StealingAttack:
    """Base of recipes that query each chosen image once, cache the answers and train on them.

    Subclasses implement :meth:`fit`; recipes that send several views per image override :meth:`buy`.
    """

    stolen_arch: str | None = None  # None: the tiny convnet
    train: TrainConfig | None = None

    def with_epochs(self, epochs: int) -> "StealingAttack":
        """A copy whose training runs ``epochs`` epochs (every phase, for multi-phase recipes)."""
        return replace(self, train=replace(self.train, epochs=epochs))

    def buy(self, api: RepresentationAPI, pool: ImageData, budget: int, *, seed: int = 0,
            account: str = "attacker") -> Purchase:
        """Send the first ``budget`` images of the seeded pool order once each; keep the answers."""
        images, rest = ordered_pool(pool, budget, seed)
        answers = query_all(api, images, account)
        return Purchase(images, answers, account, price_per_query(api, account), pool_rest=rest)

    def fit(self, api: RepresentationAPI, purchase: Purchase, *, seed: int = 0,
            progress: bool = False) -> AttackResult:
        """Train a stolen encoder on ``purchase``; reads only ``api.spec`` and ``api.dim``."""
        raise NotImplementedError

    def run(self, api: RepresentationAPI, pool: ImageData, budget: int, *, seed: int = 0,
            account: str = "attacker", progress: bool = False) -> AttackResult:
        return self.run_curve(api, pool, [budget], seed=seed, account=account, progress=progress)[0]

    def account_budgets(self, budgets: Sequence[int], account: str = "attacker") -> dict[str, int]:
        """The queries each account of this attack may spend on ``budgets``: the API is given exactly these."""
        return {account: max(budgets)}

    def run_curve(self, api: RepresentationAPI, pool: ImageData, budgets: Sequence[int], *, seed: int = 0,
                  account: str = "attacker", progress: bool = False, equal_steps: bool = False) -> list[AttackResult]:
        """Buy ``max(budgets)`` once; one stolen encoder per budget, trained on that prefix.

        ``equal_steps``: every prefix trains for as many optimisation steps as the largest budget (its
        epochs scaled by max / budget), so a curve compares budgets rather than schedules.
        """
        purchase = self.buy(api, pool, max(budgets), seed=seed, account=account)
        results = []
        for budget in budgets:
            part = purchase.prefix(budget)
            began = time.perf_counter()
            attack = self.with_epochs(round(self.train.epochs * max(budgets) / budget)) if equal_steps else self
            result = attack.fit(api, part, seed=seed, progress=progress)
            result.queries, result.cost, result.account = part.queries, part.cost, account
            result.extra["train_seconds"] = time.perf_counter() - began
            results.append(result)
        return results


def price_per_query(api: RepresentationAPI, account: str) -> float:
    ledger = api.ledger(account)
    return ledger.cost / ledger.images if ledger.images else 0.0
