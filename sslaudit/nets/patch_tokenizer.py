"""A k-means patch tokenizer: every image patch becomes the id of its nearest centroid.

SplitMask (El-Nouby et al., arXiv 2112.10740) predicts discrete patch tokens,
as BEiT does, but swaps BEiT's DALL-E tokenizer for lightweight ones that map
each patch to its nearest entry of a codebook (random patches or k-means
centroids). Here the codebook is k-means on contrast-normalised patches of
the training images: fitted in torch in a few seconds, batched, and fully
determined by its seed.

>>> tok = PatchTokenizer.fit(train.images, patch_size=4, vocab_size=512, seed=0)  # doctest: +SKIP
>>> tok(images).shape  # (B, 49) token ids in [0, 512) for 28-px images  # doctest: +SKIP
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, N, C * p * p)``, patches in row-major order (as a ViT's patch embedding)."""
    return F.unfold(images, patch_size, stride=patch_size).transpose(1, 2)


def normalise_patches(patches: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-patch contrast normalisation (Coates & Ng 2011): ``(x - mean) / sqrt(var + eps)``.

    ``eps`` (on ``[0, 1]`` pixels) keeps flat and faint patches near zero instead of
    blowing up their noise; all flat patches (background) share one token.
    """
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + eps).sqrt()


def nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Index of the nearest centroid (squared Euclidean) for each row of ``x`` ``(M, D)``."""
    sq = centroids.pow(2).sum(1)
    return torch.cat([(sq - 2 * x[i : i + chunk] @ centroids.T).argmin(1) for i in range(0, len(x), chunk)])


def kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator, seed_points: int = 20_000) -> torch.Tensor:
    """Lloyd's k-means, seeded by k-means++ on ``seed_points`` random rows; ``(k, D)`` centroids.

    An emptied cluster keeps its centroid.
    """
    if len(x) < k:
        raise ValueError(f"k-means needs at least k={k} points, got {len(x)}")
    pool = x[torch.randperm(len(x), generator=gen)[: max(k, seed_points)]]
    centroids = x.new_empty(k, x.shape[1])
    centroids[0] = pool[torch.randint(len(pool), (1,), generator=gen)]
    dist = (pool - centroids[0]).pow(2).sum(1)
    for j in range(1, k):  # k-means++: next seed drawn with probability ∝ squared distance
        weights = dist if dist.sum() > 0 else torch.ones_like(dist)
        centroids[j] = pool[torch.multinomial(weights, 1, generator=gen)]
        dist = torch.minimum(dist, (pool - centroids[j]).pow(2).sum(1))
    for _ in range(iters):
        assign = nearest(x, centroids)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1).to(x.dtype)
    return centroids


class PatchTokenizer(nn.Module):
    """Maps ``[0, 1]`` images ``(B, C, H, W)`` to token ids ``(B, N)`` by nearest k-means centroid."""

    def __init__(self, centroids: torch.Tensor, patch_size: int, eps: float = 0.01) -> None:
        super().__init__()
        self.patch_size, self.eps = patch_size, eps
        self.register_buffer("centroids", centroids.float())

    @property
    def vocab_size(self) -> int:
        return len(self.centroids)

    @classmethod
    def fit(cls, images: torch.Tensor, *, patch_size: int, vocab_size: int = 512, iters: int = 15,
            sample: int = 100_000, eps: float = 0.01, seed: int = 0) -> "PatchTokenizer":
        """Fit the codebook on the patches of ``images`` (uint8 or ``[0, 1]`` float).

        The patches of ``sample // patches_per_image`` images drawn with ``seed``
        are clustered; the result depends on nothing but the inputs and ``seed``.
        """
        gen = torch.Generator().manual_seed(seed)
        per_image = (images.shape[-1] // patch_size) * (images.shape[-2] // patch_size)
        pick = torch.randperm(len(images), generator=gen)[: max(1, sample // per_image)]
        chosen = images[pick.to(images.device)].cpu()
        chosen = chosen.float().div(255) if chosen.dtype == torch.uint8 else chosen.float()
        x = normalise_patches(patchify(chosen, patch_size), eps).flatten(0, 1)
        return cls(kmeans(x, vocab_size, iters, gen), patch_size, eps)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, enabled=False):  # ids must not depend on bf16 rounding
            patches = normalise_patches(patchify(images.float(), self.patch_size), self.eps)
            return nearest(patches.flatten(0, 1), self.centroids).view(patches.shape[:2])
