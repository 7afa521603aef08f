"""What every attack shares: choosing queries, buying answers once, and the one fit scaffold.

Queries are nested prefixes of one seeded permutation of the pool, so the
first 500 queries of a 5,000-query run are exactly the 500-query run. A budget
larger than the pool is filled with augmented copies of pool images; each
copy is sent, so each counts as a query.

An attack is split into ``buy`` (the only step that talks to the API) and
``fit`` (trains on what was bought, no API access). ``run_curve`` buys the
largest budget once and fits one stolen encoder per budget on nested prefixes
of the purchase, which is what a real attacker drawing a queries→quality curve
would pay for.

The fit is written once, :meth:`StealingAttack.train_stolen` (``fit`` calls it; SimReg's
multi-teacher fit and self-training's student call it on a purchase of their own). A recipe fills
in its hooks, called in this order:

1. ``tensors(purchase)``: what each step batches, aligned along dim 0 (default: images, answers);
2. ``torch.manual_seed(seed)``, then ``build(spec, dim, purchase)``: the modules trained together, a
   ``ModuleDict`` whose ``"encoder"`` is the stolen encoder (default: a :class:`StolenModel`, the
   encoder and a linear map to ``dim`` where sizes differ);
3. ``schedule(n, seed)``: the ``TrainConfig`` (default: ``train``, its batch at most the ``n`` rows);
4. ``batch_loss(model, batch, gen)``, minimised by ``sslaudit.train.fit``;
5. ``extra(model, purchase, history)``: the result's ``extra``; the queries, cost and account are
   the purchase's.

>>> result = DirectExtraction(loss="mse").run(api, pool, budget=5000)  # doctest: +SKIP
>>> results = DirectExtraction(loss="mse").run_curve(api, pool, [500, 1000, 5000])  # doctest: +SKIP
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field, replace
from typing import ClassVar, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from sslaudit.api import RepresentationAPI
from sslaudit.augment import AugmentConfig, augment
from sslaudit.data import ImageData
from sslaudit.models import Encoder, InputSpec, build_encoder
from sslaudit.train import History, TrainConfig, fit as train_loop, steps_per_epoch

# Mild augmentation for padding a small pool: the copies stay recognisable.
POOL_COPY_AUGMENT = AugmentConfig(crop_scale=(0.5, 1.0), jitter_p=0.5, brightness=0.3, contrast=0.3)
Batch = tuple[torch.Tensor, ...]  # one shuffled batch of the tensors a fit trains on


@dataclass
class AttackResult:
    """A stolen encoder with the queries that bought it and how it was trained."""

    encoder: Encoder
    queries: int
    cost: float
    history: History
    account: str
    extra: dict = field(default_factory=dict)


@runtime_checkable
class Attack(Protocol):
    """What the audit, the CLI and the benchmarks need of a configured attack recipe."""

    stolen_arch: str | None

    def run(self, api: RepresentationAPI, pool: ImageData, budget: int, *, seed: int = 0,
            account: str = "attacker", progress: bool = False) -> AttackResult: ...

    def run_curve(self, api: RepresentationAPI, pool: ImageData, budgets: Sequence[int], *, seed: int = 0,
                  account: str = "attacker", progress: bool = False,
                  equal_steps: bool = False) -> list[AttackResult]: ...

    def account_budgets(self, budgets: Sequence[int], account: str = "attacker") -> dict[str, int]: ...

    def with_epochs(self, epochs: int) -> "Attack": ...


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


@dataclass
class WholePurchase(Purchase):
    """A purchase usable only whole (not nested across budgets: sybil accounts, probes): ``sent`` counts
    every query it spent, whatever rows it trains on."""

    sent: int = 0

    @property
    def queries(self) -> int:
        return self.sent

    def prefix(self, queries: int) -> "WholePurchase":
        if queries != self.sent:
            raise ValueError(f"a {type(self).__name__} of {self.sent} queries has no {queries}-query prefix; "
                             "buy afresh")
        return self


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


def price_per_query(api: RepresentationAPI, account: str) -> float:
    ledger = api.ledger(account)
    return ledger.cost / ledger.images if ledger.images else 0.0


def build_stolen(arch: str | None, spec: InputSpec, dim: int, linear_head: bool = False) -> tuple[Encoder, nn.Module]:
    """The attacker's encoder (default: the tiny convnet) and a linear map to the API's ``dim`` if sizes
    differ or ``linear_head`` asks for one."""
    encoder = build_encoder(arch or "convnet", spec)
    head = nn.Identity() if encoder.dim == dim and not linear_head else nn.Linear(encoder.dim, dim)
    return encoder, head


class StolenModel(nn.ModuleDict):
    """The default modules of a fit: ``encoder`` (the one returned) and ``head``; ``model(x)`` = head(encoder(x))."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self["head"](self["encoder"](images))


def batch_config(train: TrainConfig, n: int, seed: int, **changes: object) -> TrainConfig:
    """``train`` with ``seed``, and a batch no larger than the ``n`` samples bought."""
    return replace(train, seed=seed, batch_size=min(train.batch_size, n), **changes)


@dataclass(kw_only=True)
class StealingAttack:
    """Base of recipes that query each chosen image once, cache the answers and train on them.

    Subclasses define :meth:`batch_loss` (and the other hooks where they differ); recipes that send
    several views per image override :meth:`buy`.
    """

    stolen_arch: str | None = None  # None: the tiny convnet
    train: TrainConfig | None = None
    # Ours (the papers have none): always train a linear map between the stolen encoder and the answers.
    # The adaptive attacker's answer to per-account affine transforms (B4B): the map absorbs scale, sign
    # and offset, which a ReLU-ended encoder cannot produce itself.
    linear_head: bool = False
    # False where the stolen backbone is not trained in the victim's feature coordinates (a discarded
    # head in between, or no answers at all): fidelity is then reported as CKA only, never cosine.
    victim_coordinates: ClassVar[bool] = True

    def with_epochs(self, epochs: int) -> "StealingAttack":
        """A copy whose training runs ``epochs`` epochs (every phase, for multi-phase recipes)."""
        return replace(self, train=replace(self.train, epochs=epochs))

    def buy(self, api: RepresentationAPI, pool: ImageData, budget: int, *, seed: int = 0,
            account: str = "attacker") -> Purchase:
        """Send the first ``budget`` images of the seeded pool order once each; keep the answers."""
        images, rest = ordered_pool(pool, budget, seed)
        answers = query_all(api, images, account)
        return Purchase(images, answers, account, price_per_query(api, account), pool_rest=rest)

    # The hooks of the fit scaffold (the module docstring gives their order).
    def tensors(self, purchase: Purchase) -> Batch:
        """The tensors each step batches, aligned along dim 0."""
        return purchase.images, purchase.answers

    def build(self, spec: InputSpec, dim: int, purchase: Purchase) -> nn.ModuleDict:
        """The modules trained together, built after the seed; ``"encoder"`` is the one returned."""
        encoder, head = build_stolen(self.stolen_arch, spec, dim, self.linear_head)
        return StolenModel({"encoder": encoder, "head": head})

    def schedule(self, n: int, seed: int) -> TrainConfig:
        """The training settings for ``n`` rows."""
        return batch_config(self.train, n, seed)

    def batch_loss(self, model: nn.ModuleDict, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        """The loss of one shuffled ``batch``; ``gen`` draws the augmentations."""
        raise NotImplementedError(f"{type(self).__name__} defines no loss")

    def extra(self, model: nn.ModuleDict, purchase: Purchase, history: History) -> dict:
        """What the result's ``extra`` records beyond the ledger."""
        return {}

    def fit(self, api: RepresentationAPI, purchase: Purchase, *, seed: int = 0, progress: bool = False,
            mixed_precision: bool = True) -> AttackResult:
        """Train a stolen encoder on ``purchase``; reads only ``api.spec`` and ``api.dim``, spends no queries."""
        return self.train_stolen(api.spec, api.dim, purchase, seed=seed, progress=progress,
                                 mixed_precision=mixed_precision)

    def train_stolen(self, spec: InputSpec, dim: int, purchase: Purchase, *, seed: int = 0,
                     progress: bool = False, mixed_precision: bool = True) -> AttackResult:
        """The scaffold: seed, build, minimise ``batch_loss`` over ``tensors``; the encoder, the purchase's ledger."""
        tensors = self.tensors(purchase)
        torch.manual_seed(seed)
        model = self.build(spec, dim, purchase)
        train = self.schedule(len(tensors[0]), seed)
        history = train_loop(model, functools.partial(self.batch_loss, model), tensors, train, progress=progress,
                             mixed_precision=mixed_precision, desc=f"steal-{type(self).__name__.lower()}")
        return AttackResult(model["encoder"].cpu().eval(), purchase.queries, purchase.cost, history, purchase.account,
                            self.extra(model, purchase, history))

    def run(self, api: RepresentationAPI, pool: ImageData, budget: int, *, seed: int = 0,
            account: str = "attacker", progress: bool = False) -> AttackResult:
        return self.run_curve(api, pool, [budget], seed=seed, account=account, progress=progress)[0]

    def account_budgets(self, budgets: Sequence[int], account: str = "attacker") -> dict[str, int]:
        """The queries each account of this attack may spend on ``budgets``: the API is given exactly these."""
        return {account: max(budgets)}

    def equal_step_epochs(self, rows: int, reference_rows: int, seed: int = 0) -> int:
        """Epochs over ``rows`` samples that take as many optimisation steps as the recipe's epochs over
        ``reference_rows`` (batches counted as :func:`fit` counts them, ``drop_last`` included)."""
        ref, cfg = self.schedule(reference_rows, seed), self.schedule(rows, seed)
        steps = ref.epochs * steps_per_epoch(ref, reference_rows)
        return max(1, math.ceil(steps / steps_per_epoch(cfg, rows)))

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
            attack = (self.with_epochs(self.equal_step_epochs(len(part.images), len(purchase.images), seed))
                      if equal_steps else self)
            result = attack.fit(api, part, seed=seed, progress=progress)
            result.queries, result.cost, result.account = part.queries, part.cost, account
            result.extra["train_seconds"] = time.perf_counter() - began
            results.append(result)
        return results
