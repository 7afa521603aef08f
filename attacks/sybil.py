"""Sybil attack: split the budget over several accounts and map their answers into one space.

The adaptive attacker of B4B (Dubiński, Pawlak, Boenisch, Trzciński, Dziedzic, "Bucks for Buckets
(B4B): Active Defenses Against Stealing Encoders", NeurIPS 2023; code stapaw/b4b-active-encoder-defense,
``--n_sybils 2 --num_queries_mapping 10000``). A defence that answers each account through its own
transformation (B4B's per-user affine maps) or that raises the noise with one account's coverage is
sidestepped by spreading the queries over ``accounts`` accounts:

1. every account sends the same ``anchors`` images (each account pays for them);
2. the rest of the budget is split into disjoint, near-equal chunks of the pool, one per account;
3. for each account k > 1 an affine map ``v ↦ v W + b`` from its anchor answers to account 1's is
   fitted by ridge least squares, its chunk answers are mapped into account 1's space, and everything
   is merged into one :class:`~sslaudit.attack.Purchase` that an inner attack (default MSE direct
   extraction) trains on.

Total queries = ``anchors × accounts + chunks`` = the budget, exactly. Accounts are named
``{account}-1`` … ``{account}-K``; the result's ``account`` is account 1 (the space the copy imitates),
``extra`` holds every account's ledger and each map's fit and leave-one-out errors. Only ``inner.fit``
is used (one answer per image); ``SelfTraining(base=SybilAttack())`` composes.

Anchors: B4B used 10,000 anchors per account with 50,000+ queries. Here the default is 10 % of the
budget per account (20 % of it spent on anchors with two accounts). A map with bias from d dimensions
needs ≥ d + 1 anchors to be determined (257 for d = 256), which small budgets cannot afford, so the map
is a ridge regression shrunk towards the identity (accounts are assumed to be served alike until the
anchors say otherwise: directions the anchors never span are passed through, not zeroed), and the
ridge strength is chosen by closed-form leave-one-out error on the anchors unless ``ridge`` is given.

Budget curves are not nested prefixes here (each budget changes the anchor count and every account's
chunk), so :meth:`SybilAttack.run_curve` buys each budget afresh, on accounts named ``{account}@{budget}-k``.

>>> result = SybilAttack(accounts=2).run(api, pool, budget=5000)  # doctest: +SKIP
>>> result.extra["ledgers"], result.extra["mapping_error"]  # doctest: +SKIP
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch

from sslaudit.api import RepresentationAPI
from sslaudit.attack import (AttackResult, Purchase, StealingAttack, WholePurchase, ordered_pool, price_per_query,
                             query_all)
from sslaudit.attacks.direct_extraction import DirectExtraction
from sslaudit.data import ImageData
from sslaudit.registry import register_attack

RIDGE_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)  # x mean eigenvalue of Xcᵀ Xc


@dataclass
class SybilPurchase(WholePurchase):
    """A merged purchase: ``images``/``answers`` in account 1's space; ``sent`` queries over all accounts.

    ``owner[i]`` is the index of the account that bought row i (anchors count as account 0's).
    """

    owner: torch.Tensor | None = None
    report: dict = field(default_factory=dict)


def fit_affine_map(x: torch.Tensor, y: torch.Tensor, ridge: float | None = None,
                   prior: str = "identity") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(W, b, info) minimising ||x W + b - y||² + λ ||W - P||², P = I (``prior="identity"``) or 0.

    λ = ``ridge`` × the mean eigenvalue of the centred Gram matrix; ``ridge=None`` picks it from
    :data:`RIDGE_GRID` by the closed-form leave-one-out error. ``info`` has the relative errors.
    """
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    p = torch.eye(x.shape[1], y.shape[1], dtype=x.dtype) if prior == "identity" else x.new_zeros(x.shape[1], y.shape[1])
    r = yc - xc @ p  # what the map must add to the prior
    u, s, vt = torch.linalg.svd(xc, full_matrices=False)
    keep = s > s.max() * 1e-10  # the span of xc (with fewer anchors than d + 1, U also holds the ones direction)
    u, s, vt = u[:, keep], s[keep], vt[keep]
    unit = max(float(s.pow(2).sum()) / x.shape[1], 1e-12)
    spread = float(yc.norm()) or 1.0
    uty = u.T @ r
    # 1 − h and the residual are formed from λ/(s² + λ) directly, not as 1 − (something near 1): with fewer
    # anchors than dimensions + 1 the hat matrix is nearly the identity and the subtraction cancels.
    outside = (r - u @ uty, (1 - 1 / len(x) - u.pow(2).sum(1)).clamp_min(0))  # beyond the span of xc
    best: tuple[float, float] | None = None
    for rel in RIDGE_GRID if ridge is None else (ridge,):
        damp = rel * unit / (s.pow(2) + rel * unit)  # 1 − shrink
        resid = outside[0] + u @ (damp[:, None] * uty)
        one_minus_h = outside[1] + (u.pow(2) * damp).sum(1)  # h = Σ u² shrink + 1/n (the mean's share)
        loo = float((resid / one_minus_h.clamp_min(1e-300)[:, None]).norm()) / spread
        if best is None or loo < best[1]:
            best = (rel, loo)
    rel, loo = best
    w = p + vt.T @ ((s / (s.pow(2) + rel * unit))[:, None] * uty)
    b = my - mx @ w
    fit_error = float((x @ w + b - y).norm()) / spread
    return w.float(), b.float(), {"ridge": rel, "fit_error": fit_error, "loo_error": loo}


@register_attack("sybil")
@dataclass(kw_only=True)
class SybilAttack(StealingAttack):
    """Spread the budget over ``accounts`` accounts, align them on shared anchors, train ``inner``."""

    accounts: int = 2
    anchors: int | None = None  # per account; None: ceil(anchor_fraction × budget)
    anchor_fraction: float = 0.1
    ridge: float | None = None  # relative ridge strength; None: leave-one-out over RIDGE_GRID
    prior: str = "identity"  # shrink the map towards "identity" or "zero"
    inner: StealingAttack | None = None  # default DirectExtraction(loss="mse")

    def __post_init__(self) -> None:
        if self.accounts < 2:
            raise ValueError("a sybil attack needs accounts >= 2")
        if not 0 < self.anchor_fraction < 1 or (self.anchors is not None and self.anchors < 1):
            raise ValueError("anchors must be >= 1 and anchor_fraction in (0, 1)")
        if self.prior not in ("identity", "zero"):
            raise ValueError("prior must be 'identity' or 'zero'")
        inner = self.inner or DirectExtraction(loss="mse")
        changes = {k: v for k, v in (("stolen_arch", self.stolen_arch), ("train", self.train)) if v is not None}
        self.inner = replace(inner, **changes) if changes else inner  # so the CLI's overrides reach it
        self.stolen_arch, self.train = self.inner.stolen_arch, self.inner.train

    def anchor_count(self, budget: int) -> int:
        """Anchors per account for ``budget``; a clear error when the budget cannot pay for them."""
        anchors = self.anchors if self.anchors is not None else math.ceil(self.anchor_fraction * budget)
        if anchors * self.accounts > budget:
            raise ValueError(f"a budget of {budget} cannot pay for {anchors} anchors on each of {self.accounts}"
                             f" accounts ({anchors * self.accounts} queries); lower anchors or raise the budget")
        return anchors

    def chunk_sizes(self, budget: int) -> tuple[int, list[int]]:
        """(anchors per account, each account's disjoint chunk) for ``budget``."""
        a = self.anchor_count(budget)
        rest = budget - a * self.accounts
        return a, [rest // self.accounts + (k < rest % self.accounts) for k in range(self.accounts)]

    def _prefix(self, budgets: Sequence[int], budget: int, account: str) -> str:
        return account if len(budgets) == 1 else f"{account}@{budget}"

    def account_budgets(self, budgets: Sequence[int], account: str = "attacker") -> dict[str, int]:
        """Each sybil account's share: its anchors plus its chunk, for every budget of the curve."""
        shares = {}
        for budget in budgets:
            a, sizes = self.chunk_sizes(budget)
            prefix = self._prefix(budgets, budget, account)
            shares.update({f"{prefix}-{k + 1}": a + size for k, size in enumerate(sizes)})
        return shares

    def assign(self, rest: torch.Tensor, sizes: list[int], seed: int) -> tuple[list[torch.Tensor], dict]:
        """Which account sends which non-anchor image: ``sizes[k]`` images for account k, and what to
        report about the choice. Here: consecutive chunks of the seeded pool order."""
        bounds = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
        return [rest[bounds[k] : bounds[k + 1]] for k in range(len(sizes))], {}

    def buy(self, api: RepresentationAPI, pool: ImageData, budget: int, *, seed: int = 0,
            account: str = "attacker") -> SybilPurchase:
        """Anchors on every account, one disjoint chunk each, chunks mapped into account 1's space."""
        a, sizes = self.chunk_sizes(budget)
        images, pool_rest = ordered_pool(pool, a + sum(sizes), seed)
        anchors, (chunks, chosen) = images[:a], self.assign(images[a:], sizes, seed)
        names = [f"{account}-{k + 1}" for k in range(self.accounts)]
        reference, answers, owner, errors = None, [], [], {}
        for k, (name, chunk) in enumerate(zip(names, chunks)):
            got = query_all(api, torch.cat([anchors, chunk]), name)
            seen, mine = got[:a], got[a:]
            if k == 0:
                reference = seen
                answers += [seen, mine]
                owner += [torch.zeros(a + len(chunk), dtype=torch.long)]
                continue
            w, b, info = fit_affine_map(seen, reference, self.ridge, self.prior)
            answers.append(mine @ w + b)
            owner.append(torch.full((len(chunk),), k, dtype=torch.long))
            errors[name] = info
        report = {"accounts": names, "anchors": a, "chunks": sizes, "mapping_error": errors, **chosen,
                  "ledgers": {name: api.ledger(name).to_dict() for name in names}}
        return SybilPurchase(torch.cat([anchors, *chunks]), torch.cat(answers), names[0],
                             price_per_query(api, names[0]), pool_rest=pool_rest, sent=budget,
                             owner=torch.cat(owner), report=report)

    def fit(self, api: RepresentationAPI, purchase: Purchase, *, seed: int = 0,
            progress: bool = False) -> AttackResult:
        """Train the inner attack on the merged purchase (its queries, cost and account); spends no queries."""
        result = self.inner.fit(api, purchase, seed=seed, progress=progress)
        if isinstance(purchase, SybilPurchase):
            result.extra.update(purchase.report)
        return result

    def run_curve(self, api: RepresentationAPI, pool: ImageData, budgets: Sequence[int], *, seed: int = 0,
                  account: str = "attacker", progress: bool = False, equal_steps: bool = False) -> list[AttackResult]:
        """One fresh purchase per budget (prefixes are not nested across accounts); each trains its own
        schedule, so ``equal_steps`` does not apply."""
        results = []
        for budget in budgets:
            purchase = self.buy(api, pool, budget, seed=seed, account=self._prefix(budgets, budget, account))
            began = time.perf_counter()
            result = self.fit(api, purchase, seed=seed, progress=progress)
            result.extra["train_seconds"] = time.perf_counter() - began
            results.append(result)
        return results
