"""RDA: Refine, Discriminate and Align (Wu et al., ECCV 2024, arXiv 2312.00855).

Threat model: black box, features seen, the attacker's own unlabelled pool.
Refine: each chosen image is sent as M augmented views (M queries) and its
prototype is the mean of the M unit-normalised answers, p_i = (1/M) Σ_m f̂(A_m(x_i)),
*not* re-normalised (its norm ≤ 1 carries the views' agreement). Discriminate
and align: the stolen encoder sees Q views of each image (fixed 0.75-area
crops) and is trained with rda_loss against the prototypes (paper code
ShuchiWu/RDA, ``OurLoss``, α = β = 1, τ = 0.07).

Our choices (the paper's values in brackets):

- M = 5 views per image [10 for CIFAR, 5 for ImageNet/CLIP]: a 5,000-query
  budget then buys 1,000 images rather than 500; a budget's remainder
  (B mod M) is left unspent.
- Q = 2 training views per image [5]: each view is a forward/backward pass, so
  Q multiplies CPU time; Q = 2 keeps the batch's cross-view negatives.
- 100 epochs, AdamW lr 1e-3, wd 1e-4, batch 100 [the same, with Adam's coupled
  decay]: a 5,000-query purchase (1,000 images, 1,000 steps of 2 x 100 views)
  trains in about 110 s with the default ``convnet`` on one idle CPU core.
- No checkpoint selection [the code keeps the epoch with the best kNN accuracy
  on the downstream *test* set]: the last epoch is returned.
- Views: crop (ratio 1), flip, colour jitter (0.4, 0.4, 0.4, 0.2) p 0.8 and
  grayscale p 0.2 [the same, plus blur p 0.1 and solarise p 0.1, which
  ``sslaudit.augment`` does not have].
- L_A adds ``eps`` = 1e-6 to ||s - p||²: the prototype of M identical answers
  has norm 1 and a perfect copy would divide by zero.

Prototype views are drawn in fixed chunks of images, each chunk with its own
generator seeded from (seed, chunk), so a smaller budget's views are exactly
the first views of a larger one (prefixes nest).

>>> result = RDA().run(api, pool, budget=5000)  # 1,000 images x 5 views  # doctest: +SKIP
"""
from __future__ import annotations

from collections.abc import Iterator
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

PROTO_AUGMENT = AugmentConfig(crop_scale=(0.9, 0.9), crop_ratio=(1.0, 1.0), hue=0.2)
TRAIN_AUGMENT = AugmentConfig(crop_scale=(0.75, 0.75), crop_ratio=(1.0, 1.0), hue=0.2)
PAPER_TRAIN = TrainConfig(epochs=100, batch_size=100, lr=1e-3, weight_decay=1e-4, optimizer="adamw",
                          warmup_epochs=1)
VIEW_CHUNK = 100  # images whose views share one generator


@float32_logits
def rda_loss(stolen: torch.Tensor, prototypes: torch.Tensor, temperature: float = 0.07, alpha: float = 1.0,
             beta: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """α·L_D + β·L_A of Wu et al., with s = normalize(stolen) and p the prototypes as given (norm ≤ 1).

    L_D = -(1/B) Σ_i log( exp(s_i·p_i/τ) / (Σ_{j≠i} exp(s_i·p_j/τ) + Σ_{j≠i} exp(s_i·s_j/τ)) )
    L_A = -(1/B) Σ_i log( (cos(s_i, p_i) + 1) / (||s_i - p_i||² + eps) )
    """
    s, p = F.normalize(stolen.float(), dim=1), prototypes.float().to(stolen.device)
    if len(s) < 2:
        raise ValueError("rda_loss needs a batch of at least 2 (the denominator sums over j ≠ i)")
    off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    sp, ss = s @ p.T / temperature, s @ s.T / temperature
    negatives = torch.cat([sp.masked_fill(~off, float("-inf")), ss.masked_fill(~off, float("-inf"))], 1)
    discriminate = (negatives.logsumexp(1) - sp.diagonal()).mean()
    align = -(F.cosine_similarity(s, p, dim=1) + 1).div((s - p).pow(2).sum(1) + eps).log().mean()
    return alpha * discriminate + beta * align


def prototype_views(images: torch.Tensor, views: int, cfg: AugmentConfig, seed: int,
                    chunk: int = VIEW_CHUNK) -> Iterator[torch.Tensor]:
    """Per chunk of ``chunk`` images, their ``views`` views each (image 1's views, then image 2's ...)."""
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk]
        padded = torch.cat([part, part[:1].expand(chunk - len(part), *part.shape[1:])])  # fixed-size draws
        gen = torch.Generator().manual_seed(hash((seed, start // chunk)) % 2**63)
        yield augment(padded.repeat_interleave(views, 0), cfg, gen)[: len(part) * views]


@register_attack("rda")
@dataclass(kw_only=True)
class RDA(StealingAttack):
    """Query M views per image once, average them into prototypes, train with rda_loss."""

    views: int = 5  # M: queries per image
    train_views: int = 2  # Q: stolen-side views per image and step
    temperature: float = 0.07
    alpha: float = 1.0
    beta: float = 1.0
    proto_augment: AugmentConfig = field(default_factory=lambda: PROTO_AUGMENT)
    train_augment: AugmentConfig = field(default_factory=lambda: TRAIN_AUGMENT)

    def __post_init__(self) -> None:
        if self.views < 1 or self.train_views < 1:
            raise ValueError("views and train_views must be positive")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        if self.train is None:
            self.train = PAPER_TRAIN

    def buy(self, api: RepresentationAPI, pool: ImageData, budget: int, *, seed: int = 0,
            account: str = "attacker") -> Purchase:
        """Send ``budget // views`` images as ``views`` views each; keep one prototype per image."""
        n = budget // self.views
        if n < 1:
            raise ValueError(f"a budget of {budget} queries buys no image at {self.views} views per image")
        images, rest = ordered_pool(pool, n, seed)
        prototypes = []
        for views in prototype_views(images, self.views, self.proto_augment, seed):
            answers = F.normalize(query_all(api, views, account).float(), dim=1)
            prototypes.append(answers.view(-1, self.views, answers.shape[1]).mean(1))
        return Purchase(images, torch.cat(prototypes), account, price_per_query(api, account),
                        queries_per_image=self.views, pool_rest=rest)

    def schedule(self, n: int, seed: int) -> TrainConfig:
        """Full batches only (``drop_last``): L_D contrasts the rows of a batch."""
        return batch_config(self.train, n, seed, drop_last=True)

    def batch_loss(self, model: nn.ModuleDict, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        """rda_loss of each of the Q views (one forward pass for all) against the prototypes, averaged."""
        x, p = batch
        views = torch.cat([augment(x, self.train_augment, gen) for _ in range(self.train_views)])
        stolen = model(views).chunk(self.train_views)
        return torch.stack([rda_loss(s, p, self.temperature, self.alpha, self.beta) for s in stolen]).mean()
