"""SSL-Small (Shi, Li, Wang, Yang, Wang, AAAI 2022, arXiv 2107.14762; code WOWNICE/ssl-small): no stealing at all.

The do-it-yourself baseline: the attacker trains its small encoder with
self-supervision on the pool it already owns and sends ZERO queries. The
recipe is the paper's released "improved baseline" for small models: MoCo-v2
(query encoder, momentum key encoder, FIFO queue of negatives, InfoNCE with the
positive key at logit 0) with temperature 0.1 (MoCo-v2: 0.2), a *wide*
projector Linear(d→2d)–ReLU–Linear(2d→128), stronger colour jitter
(0.8, 0.8, 0.8, 0.4) with p 0.8, grayscale p 0.5 (RGB only; on 1-channel images
only brightness/contrast act), crop scale (0.2, 1) and a cosine lr.

Changes for a 5,000-image pool and a short CPU run (the paper: 800 epochs on ImageNet, batch 512, SGD lr 0.06):
- 100 epochs at batch 256, lr 0.06, no warm-up (the paper's lr at half its batch: ~1,900 steps, not ~2M);
- key momentum 0.99, not 0.999: 0.999 averages over ~1,000 steps, half of this run (MoCo's CIFAR demo: 0.99);
- queue K = 4096 (paper 65,536), capped at the keys of one epoch, so a small pool (1,797 digits) never
  holds two keys of one image; the queue then spans most of an epoch, so an image's own key from the
  previous epoch is often still queued (~38 % of queries at K=4096/N=5000, vs ~0.1 % on ImageNet):
  ``exclude_own_keys`` masks it out of the negatives (our addition, not in the paper);
- shuffle-BN emulated on one device by BatchNorm over ``bn_groups`` chunks, the keys' chunks shuffled
  (as MoCo's CIFAR demo's SplitBatchNorm);
- no Gaussian blur: a 23 px kernel on 224 px images would erase most of a 28 px image.
The budget is ignored: one encoder is trained on the whole pool and returned for every budget at 0 queries.

>>> result = SSLSmall().run(api, attack_pool("fashion-mnist"), budget=5000)  # doctest: +SKIP
>>> result.queries, result.cost  # doctest: +SKIP
(0, 0.0)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sslaudit.api import RepresentationAPI
from sslaudit.attack import AttackResult, Batch, Purchase, StealingAttack, ordered_pool
from sslaudit.augment import AugmentConfig, augment
from sslaudit.data import ImageData
from sslaudit.losses import ema_update, float32_logits
from sslaudit.models import InputSpec, build_encoder
from sslaudit.registry import register_attack
from sslaudit.train import History, TrainConfig

# The released improved baseline's ``--cj 1 --grey-scale 0.5``: ColorJitter(0.8, 0.8, 0.8, 0.4) with p 0.8.
SSL_SMALL_AUGMENT = AugmentConfig(crop_scale=(0.2, 1.0), jitter_p=0.8, brightness=0.8, contrast=0.8,
                                  saturation=0.8, hue=0.4, grayscale_p=0.5)


@float32_logits
def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.1,
              exclude: torch.Tensor | None = None) -> torch.Tensor:
    """MoCo's InfoNCE: mean_i −log softmax([q̂_i·k̂_i, q̂_i·Q̂_1, …, q̂_i·Q̂_K] / τ)[0], vectors L2-normalised.

    ``q`` (B, d) queries, ``k`` (B, d) their positive keys, ``queue`` (K, d) negatives; no gradient reaches
    ``k`` or ``queue``. ``exclude`` (B, K) bool drops queue entries from row i's negatives.
    """
    q = F.normalize(q.float(), dim=1)
    k, queue = (F.normalize(t.detach().float(), dim=1) for t in (k, queue))
    negatives = q @ queue.T
    if exclude is not None:
        negatives = negatives.masked_fill(exclude, float("-inf"))
    logits = torch.cat([(q * k).sum(1, keepdim=True), negatives], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


class KeyQueue(nn.Module):
    """FIFO of the last ``size`` keys (rows, normalised) with the pool index of each key's image (−1: initial)."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor, ids: torch.Tensor) -> None:
        """Overwrite the ``len(keys)`` oldest entries (wrapping around) and advance the pointer."""
        size = len(self.keys)
        if len(keys) > size:
            raise ValueError(f"cannot push {len(keys)} keys into a queue of {size}")
        slots = (self.ptr + torch.arange(len(keys), device=self.keys.device)) % size
        self.keys[slots] = F.normalize(keys.float(), dim=1).to(self.keys.dtype)
        self.ids[slots] = ids.to(self.ids.device)
        self.ptr.copy_((self.ptr + len(keys)) % size)


def grouped_forward(net: nn.Module, x: torch.Tensor, groups: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """``net`` over ``groups`` chunks of ``x`` (BatchNorm statistics per chunk); with ``gen`` the rows are shuffled
    before chunking and the outputs put back in order (MoCo's shuffle-BN for the keys)."""
    order = torch.randperm(len(x), generator=gen, device=x.device) if gen is not None else None
    x = x[order] if order is not None else x
    out = torch.cat([net(chunk) for chunk in x.chunk(groups)])
    return out[torch.argsort(order)] if order is not None else out


@register_attack("ssl-small")
@dataclass(kw_only=True)
class SSLSmall(StealingAttack):
    """MoCo-v2 with SSL-Small's fixes on the attacker's own pool; spends no queries."""

    victim_coordinates: ClassVar[bool] = False  # never sees an answer: its space is its own

    temperature: float = 0.1
    momentum: float = 0.99  # paper 0.999 over ~2M steps
    queue_size: int = 4096  # paper 65,536; capped at one epoch of keys
    proj_dim: int = 128
    bn_groups: int = 4  # shuffle-BN emulation: 4 chunks of 64 at batch 256
    exclude_own_keys: bool = True
    augment: AugmentConfig = field(default_factory=lambda: SSL_SMALL_AUGMENT)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        if not 0 <= self.momentum <= 1:
            raise ValueError("momentum must be in [0, 1]")
        if self.queue_size < 1 or self.bn_groups < 1 or self.proj_dim < 1:
            raise ValueError("queue_size, bn_groups and proj_dim must be positive")
        if self.train is None:
            self.train = TrainConfig(epochs=100, batch_size=256, lr=0.06, weight_decay=1e-4, warmup_epochs=0)

    def buy(self, api: RepresentationAPI, pool: ImageData, budget: int, *, seed: int = 0,
            account: str = "attacker") -> Purchase:
        """Send nothing: the whole pool in the seeded order, no answers, 0 queries (``budget`` is ignored)."""
        images, _ = ordered_pool(pool, len(pool), seed)
        return Purchase(images, images.new_zeros(len(images), 0), account, 0.0, queries_per_image=0)

    def queue_length(self, n: int) -> int:
        """K = ``queue_size``, capped at the keys of one epoch over ``n`` images (full batches only)."""
        batch = min(self.train.batch_size, n)
        return min(self.queue_size, n // batch * batch)

    def tensors(self, purchase: Purchase) -> Batch:
        """The pool images and their indices (the queue remembers whose key it holds)."""
        return purchase.images, torch.arange(len(purchase.images))

    def build(self, spec: InputSpec, dim: int, purchase: Purchase) -> nn.ModuleDict:
        """The query encoder (the one returned) with its wide projector, its momentum copy, the key queue."""
        encoder = build_encoder(self.stolen_arch or "convnet", spec)
        d = encoder.dim
        query = nn.Sequential(encoder, nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(inplace=True),
                                                     nn.Linear(2 * d, self.proj_dim)))
        key = copy.deepcopy(query).requires_grad_(False)
        queue = KeyQueue(self.queue_length(len(purchase.images)), self.proj_dim)
        return nn.ModuleDict({"encoder": encoder, "query": query, "key": key, "queue": queue})

    def batch_loss(self, model: nn.ModuleDict, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        """moco_loss of one view's query against the other view's momentum key and the queue; then enqueue."""
        x, ids = batch
        query, key, queue = model.query, model.key, model.queue
        ema_update(key, query, self.momentum)  # after the previous optimiser step, as MoCo's forward
        q = grouped_forward(query, augment(x, self.augment, gen), self.bn_groups)
        with torch.no_grad():
            k = grouped_forward(key, augment(x, self.augment, gen), self.bn_groups, gen)
        exclude = queue.ids[None, :] == ids[:, None] if self.exclude_own_keys else None
        loss = moco_loss(q, k, queue.keys, self.temperature, exclude)
        queue.push(k, ids)
        return loss

    def extra(self, model: nn.ModuleDict, purchase: Purchase, history: History) -> dict:
        return {"train_seconds": sum(history.seconds), "queue_size": len(model.queue.keys),
                "pool_images": len(purchase.images), "budget_ignored": True}

    def run_curve(self, api: RepresentationAPI, pool: ImageData, budgets: Sequence[int], *, seed: int = 0,
                  account: str = "attacker", progress: bool = False, equal_steps: bool = False) -> list[AttackResult]:
        """One encoder trained on the whole pool, the same for every budget (0 queries, cost 0)."""
        if not budgets:
            raise ValueError("give at least one budget")
        result = self.fit(api, self.buy(api, pool, max(budgets), seed=seed, account=account), seed=seed,
                          progress=progress)
        return [replace(result, extra=dict(result.extra, budget=b)) for b in budgets]
