"""Cont-Steal (Sha, He, Yu, Backes, Zhang, "Can't Steal? Cont-Steal! Contrastive Stealing Attacks Against
Image Encoders", CVPR 2023; code zeyangsha/Cont-Steal; the paper form as re-implemented in
ShuchiWu/RDA ``Con-Steal.py``).

With unit-normalised victim answers t and surrogate features s of a batch, the victim's answer is the
positive and there are two negative sets, cross victim-surrogate and surrogate-surrogate, the positive
left out of the denominator (so the loss can go below zero):

    L = -(1/B) Σ_i log[ exp(t_i·s_i/τ) / ( Σ_{j≠i} exp(t_i·s_j/τ) + Σ_{j≠i} exp(s_i·s_j/τ) ) ],  τ = 0.07

τ = 0.07 is the paper form's (RDA); the official code's τ = 0.5 belongs to its plain NT-Xent variant.

Query accounting (our choice): the paper re-queries the victim on a fresh augmentation every epoch
(queries = epochs x images). Here every image sent is a query, so by default each image is queried
ONCE, clean (the base ``buy``); t_i = f(x_i) is cached and the surrogate sees a fresh aug(x_i) each
step. ``views_per_image = M > 1`` instead sends M augmented views of each image once (counted M
queries per image, like RDA's prototypes) and each step draws one of the M cached answers as t_i,
closer to the paper's aug₁ (victim) / aug₂ (surrogate) pairs at M times the price.

Training (ours): AdamW lr 3e-4 (the code's Adam lr), wd 1e-4, batch 64 (63 + 63 negatives), 60 epochs
(≈ 2 min for 5,000 queries with the default ``convnet`` on a 2-core CPU, as MSE's 60 epochs at batch
32); the surrogate's augmentation is direct extraction's: crop (0.5, 1), flip, colour jitter.

>>> result = ContSteal().run(api, pool, budget=5000)  # doctest: +SKIP
>>> result = ContSteal(views_per_image=5).run(api, pool, budget=5000)  # 1,000 images x 5 views  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sslaudit.api import RepresentationAPI
from sslaudit.attack import (Batch, Purchase, StealingAttack, batch_config, ordered_pool, price_per_query,
                             query_all)
from sslaudit.augment import AugmentConfig, augment
from sslaudit.data import ImageData
from sslaudit.losses import float32_logits
from sslaudit.registry import register_attack
from sslaudit.train import TrainConfig

PAPER_TRAIN = TrainConfig(epochs=60, batch_size=64, lr=3e-4, weight_decay=1e-4, optimizer="adamw",
                          warmup_epochs=1)


@float32_logits  # τ = 0.07 magnifies bf16 rounding
def cont_steal_loss(victim: torch.Tensor, stolen: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """-(1/B) Σ_i log[exp(t_i·s_i/τ) / (Σ_{j≠i} exp(t_i·s_j/τ) + Σ_{j≠i} exp(s_i·s_j/τ))], t and s normalised.

    ``victim`` (B, d) holds the answers t (no gradient needed), ``stolen`` (B, d) the surrogate's s.
    """
    t, s = F.normalize(victim.float(), dim=1), F.normalize(stolen.float(), dim=1)
    cross, self_sim = t @ s.T / temperature, s @ s.T / temperature
    eye = torch.eye(len(s), dtype=torch.bool, device=s.device)
    negatives = torch.cat([cross.masked_fill(eye, float("-inf")), self_sim.masked_fill(eye, float("-inf"))], 1)
    return (negatives.logsumexp(1) - cross.diagonal()).mean()


@register_attack("contsteal")
@dataclass(kw_only=True)
class ContSteal(StealingAttack):
    """Contrastive stealing: the victim's answer is the positive, other answers and stolen features negatives."""

    temperature: float = 0.07
    views_per_image: int = 1  # 1: query the clean image once; M > 1: query M augmented views once each
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(crop_scale=(0.5, 1.0)))

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        if self.views_per_image < 1:
            raise ValueError("views_per_image must be at least 1")
        if self.train is None:
            self.train = PAPER_TRAIN

    def buy(self, api: RepresentationAPI, pool: ImageData, budget: int, *, seed: int = 0,
            account: str = "attacker") -> Purchase:
        """One clean query per image, or ``views_per_image`` augmented views per image (answers (N, M, d))."""
        m = self.views_per_image
        if m == 1:
            return super().buy(api, pool, budget, seed=seed, account=account)
        if budget < m:
            raise ValueError(f"a budget of {budget} queries buys no image at {m} views per image")
        images, rest = ordered_pool(pool, budget // m, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        answers = torch.stack([query_all(api, augment(images, self.augment, gen), account) for _ in range(m)], 1)
        return Purchase(images, answers, account, price_per_query(api, account), queries_per_image=m, pool_rest=rest)

    def schedule(self, n: int, seed: int) -> TrainConfig:
        """Full batches only (``drop_last``): the loss contrasts the rows of a batch."""
        return batch_config(self.train, n, seed, drop_last=True)

    def batch_loss(self, model: nn.ModuleDict, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        """cont_steal_loss of a fresh augmented view of each image against its cached answer."""
        x, t = batch
        if t.ndim == 3:  # M cached answers per image: one at random each step
            pick = torch.randint(t.shape[1], (len(t),), generator=gen, device=t.device)
            t = t[torch.arange(len(t), device=t.device), pick]
        return cont_steal_loss(t, model(augment(x, self.augment, gen)), self.temperature)
