"""Query averaging: buy several answers of each image and train on their mean.

An adaptive attack against output-noise defences (the lever "averaging repeated or nearby queries
against fresh noise" of the research notes, attacks.md §10.7; the weakness of B4B's batch-seeded noise
that Dubiński et al., NeurIPS 2023, code stapaw/b4b-active-encoder-defense, leave open, defenses.md
§1.3(b)). The budget B buys ⌈B / copies⌉ distinct images, each sent ``copies`` times (the last one gets
the remainder, so exactly B queries are sent); the mean of an image's answers is its target and the
inner attack (default MSE direct extraction) trains on those targets.

The trade: ``copies`` times fewer distinct images for lower-variance targets. Against noise that is
fresh on every call (``views="repeat"``) the mean is unbiased and its noise variance falls as
σ² / copies. Against noise that is the same for the same (account, image) (B4B's answer cache) repeats
buy nothing, so the views must be different images whose clean answers are nearly the same:

- ``views="nudge"`` (our addition, the remedy for per-image noise): views 2.. change ONE pixel by one grey level
  (1/255), a different pixel per view. The bytes differ, so a per-image keyed noise draws afresh, while
  the clean feature moves by far less than the noise; variance again ≈ σ² / copies;
- ``views="augment"``: views 2.. are mild augmentations (the pool-copy augmentation); the mean also
  averages the victim's response to the augmentation, a bias the nudge avoids.

Measured (random convnet victim, 1,000 queries, MSE, equal optimisation steps): against fresh noise of
σ = 1 × the RMS feature, plain MSE on 1,000 distinct images beat averaging (CKA to the victim 0.80 vs
0.74 with 2 copies, 0.71 with 4): an MSE fit already averages the noise over images. Against B4B
(β = 20, no transform, 2,000 queries) nudge averaging kept the coverage at 11–18 % instead of 28 % and
the CKA at 0.87–0.90 instead of 0.40: its views fall in the buckets of their image.

View 1 is always the image itself. Views are drawn per chunk of images from seeded generators, so the
first q queries of a larger purchase are exactly a q-query purchase (``run_curve`` nests prefixes).
``extra["noise_rel"]``: the spread of an image's answers around their mean (the noise std estimate)
over the spread of the targets between images. The inner attack's own ``buy`` is not used: it must
train on one target per image (MSE, StolenEncoder, self-training, ...).

>>> views = torch.tensor([[[1.0], [3.0], [5.0]], [[2.0], [4.0], [9.0]]])  # 2 images x 3 answers
>>> average_views(views, sent=5)  # image 2 got only 2 of its 3 answers
tensor([[3.],
        [3.]])
>>> QueryAveraging(copies=4).account_budgets([1000])
{'attacker': 1000}
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch

from sslaudit.api import RepresentationAPI
from sslaudit.attack import (POOL_COPY_AUGMENT, AttackResult, Purchase, StealingAttack, ordered_pool,
                             price_per_query, query_all)
from sslaudit.attacks.direct_extraction import DirectExtraction
from sslaudit.attacks.rda import prototype_views
from sslaudit.augment import AugmentConfig
from sslaudit.data import ImageData
from sslaudit.defenses.common import choice, integer
from sslaudit.registry import register_attack

VIEWS = ("repeat", "nudge", "augment")
NUDGE_CHUNK = 100  # images whose nudges share one generator (prefixes nest)


def adopt_inner(outer: StealingAttack, inner: StealingAttack | None) -> StealingAttack:
    """``inner`` (default MSE direct extraction) with ``outer``'s ``stolen_arch``/``train`` overrides, which
    ``outer`` then mirrors (so the CLI's overrides and ``with_epochs`` reach the attack that trains)."""
    inner = inner or DirectExtraction(loss="mse")
    changes = {k: v for k, v in (("stolen_arch", outer.stolen_arch), ("train", outer.train)) if v is not None}
    inner = replace(inner, **changes) if changes else inner
    outer.stolen_arch, outer.train = inner.stolen_arch, inner.train
    return inner


def nudged(images: torch.Tensor, copies: int, seed: int) -> torch.Tensor:
    """``copies`` views per image (image-major): the image, then copies − 1 one-pixel ±1/255 changes."""
    n, per = len(images), images[0].numel() if len(images) else 0
    flat = images.flatten(1).repeat_interleave(copies, 0)
    for start in range(0, n, NUDGE_CHUNK):
        gen = torch.Generator().manual_seed(hash((seed, start // NUDGE_CHUNK, 7)) % 2**63)
        base = torch.randint(per, (NUDGE_CHUNK,), generator=gen)[: min(NUDGE_CHUNK, n - start)]
        for j in range(1, copies):  # view j of image i changes pixel (base_i + j·per/copies) mod per: distinct
            rows = (torch.arange(start, start + len(base)) * copies + j)
            cols = (base + j * (per // copies)) % per
            value = flat[rows, cols]
            flat[rows, cols] = torch.where(value + 1 / 255 <= 1, value + 1 / 255, value - 1 / 255)
    return flat.view(n * copies, *images.shape[1:])


def make_views(images: torch.Tensor, copies: int, views: str, cfg: AugmentConfig, seed: int) -> torch.Tensor:
    """The ``copies`` views of each image, image-major (image 1's views, then image 2's, ...)."""
    if views == "repeat" or copies == 1:
        return images.repeat_interleave(copies, 0)
    if views == "nudge":
        return nudged(images, copies, seed)
    extra = torch.cat(list(prototype_views(images, copies - 1, cfg, seed)))
    return torch.cat([images[:, None], extra.view(len(images), copies - 1, *images.shape[1:])], 1).flatten(0, 1)


def view_counts(n: int, copies: int, sent: int) -> torch.Tensor:
    """How many of its ``copies`` views each of ``n`` images got when ``sent`` queries went image-major."""
    return (sent - torch.arange(n) * copies).clamp(0, copies)


def average_views(view_answers: torch.Tensor, sent: int) -> torch.Tensor:
    """The mean of each image's answers received (``view_answers``: (N, copies, D), image-major)."""
    counts = view_counts(len(view_answers), view_answers.shape[1], sent)
    mask = (torch.arange(view_answers.shape[1])[None] < counts[:, None]).to(view_answers.dtype)
    return (view_answers * mask[..., None]).sum(1) / counts.clamp_min(1)[:, None].to(view_answers.dtype)


@dataclass
class AveragedPurchase(Purchase):
    """One averaged target per image; ``view_answers`` (N, copies, D) holds every answer, ``sent`` the queries."""

    view_answers: torch.Tensor | None = None
    sent: int = 0

    @property
    def queries(self) -> int:
        return self.sent

    def prefix(self, queries: int) -> "AveragedPurchase":
        """The purchase of the first ``queries`` queries (image-major, the last image partly averaged)."""
        assert self.view_answers is not None
        if not 1 <= queries <= self.sent:
            raise ValueError(f"a prefix of {queries} queries needs 1..{self.sent} bought queries")
        n = math.ceil(queries / self.view_answers.shape[1])
        rest = [self.images[n:]] + ([self.pool_rest] if self.pool_rest is not None else [])
        views = self.view_answers[:n]
        return replace(self, images=self.images[:n], answers=average_views(views, queries), view_answers=views,
                       sent=queries, pool_rest=torch.cat(rest))

    def noise_rel(self) -> float | None:
        """Std of the answers around their image's mean over the targets' std between images (0: no noise;
        None with fewer than two fully answered images or one copy)."""
        assert self.view_answers is not None
        counts = view_counts(len(self.images), self.view_answers.shape[1], self.sent)
        full = counts == self.view_answers.shape[1]
        if self.view_answers.shape[1] < 2 or full.sum() < 2:
            return None
        v = self.view_answers[full].double()
        within = v.var(1).mean()
        between = v.mean(1).var(0).mean()
        return float((within / between.clamp_min(1e-300)).sqrt())


@register_attack("average")
@dataclass(kw_only=True)
class QueryAveraging(StealingAttack):
    """Send each image as ``copies`` views, average the answers, train ``inner`` on the means."""

    copies: int = 4
    views: str = "repeat"  # "repeat" (fresh noise), "nudge" or "augment" (per-image deterministic noise)
    augment: AugmentConfig = field(default_factory=lambda: POOL_COPY_AUGMENT)
    inner: StealingAttack | None = None  # default DirectExtraction(loss="mse")

    def __post_init__(self) -> None:
        self.copies = integer("average", "copies", self.copies, "copies=4", minimum=1)
        self.views = choice("average", "views", self.views, VIEWS)
        self.inner = adopt_inner(self, self.inner)

    def with_epochs(self, epochs: int) -> "QueryAveraging":
        inner = self.inner.with_epochs(epochs)
        return replace(self, inner=inner, train=inner.train)

    def buy(self, api: RepresentationAPI, pool: ImageData, budget: int, *, seed: int = 0,
            account: str = "attacker") -> AveragedPurchase:
        """⌈budget / copies⌉ images, each sent as ``copies`` views (image-major, exactly ``budget`` queries)."""
        images, rest = ordered_pool(pool, math.ceil(budget / self.copies), seed)
        queries = make_views(images, self.copies, self.views, self.augment, seed)[:budget]
        got = query_all(api, queries, account)
        padded = torch.cat([got, got.new_zeros(len(images) * self.copies - budget, got.shape[1])])
        views = padded.view(len(images), self.copies, -1)
        return AveragedPurchase(images, average_views(views, budget), account, price_per_query(api, account),
                                pool_rest=rest, view_answers=views, sent=budget)

    def fit(self, api: RepresentationAPI, purchase: Purchase, *, seed: int = 0,
            progress: bool = False) -> AttackResult:
        """The inner attack on the averaged targets; spends no queries."""
        result = self.inner.fit(api, purchase, seed=seed, progress=progress)
        result.extra.update({"copies": self.copies, "views": self.views, "distinct_images": len(purchase.images)})
        if isinstance(purchase, AveragedPurchase):
            result.extra["noise_rel"] = purchase.noise_rel()
        return result

    def account_budgets(self, budgets: Sequence[int], account: str = "attacker") -> dict[str, int]:
        return {account: max(budgets)}
