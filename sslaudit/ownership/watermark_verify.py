"""Verifying the rotation watermark (Dziedzic, Dhawan, Kaleem, Guan, Papernot, ICML 2022; code
cleverhans-lab/ssl-attacks-defenses ``watermark.py``, ``simclr.py::steal``): the owner's secret head
(:mod:`sslaudit.ownership.watermark`) reads the rotation class from a suspect's features.

Trials: each verification image is turned by one quarter turn k (a public seeded permutation of
0, 1, 2, 3, 0, 1, ..., so the two classes {0°, 90°} and {180°, 270°} are exactly balanced and a
constant guess scores exactly 0.5); the statistic is the head's accuracy on the suspect's features.

- :func:`verify_watermark`: one-sided exact binomial test against 0.5 (``scipy.stats.binomtest``,
  ``alternative="greater"``), as the reference compares with chance. Its null assumes an independent
  encoder gives the head no rotation signal; a rotation-sensitive independent encoder can break that
  (a random head reads *some* rotation signal from it, above or below 0.5).
- :func:`verify_watermark_null_heads` (our addition): exact under "independent", because the suspect
  is then independent of the secret head, which is exchangeable with fresh heads drawn from the same
  random init: p = (1 + #{fresh heads scoring at least as high}) / (K + 1); K = 199 gives p down to
  0.005. The score is the mean margin, logit(true class) − logit(other), not the accuracy: a
  watermarked encoder carries a rotation signal that lucky random heads read almost as accurately,
  but the encoder was trained to give the *secret* head large margins. Trial (4,096 FMNIST images,
  384 steps, convnet-small, weight 10; 2,000 test images): the victim's accuracy 95.7 % ranked p =
  0.03 among 199 heads (best 97.5 %), its margin 2.02 ranked first (best 0.33); an MSE copy
  (5,000 queries): 72.4 %, p = 0.015 by accuracy, margin 0.59 vs best 0.10, p = 0.005; the clean
  victim: 49.6 %, margin p = 0.34. Calibration: on the shipped clean victim, 100 stand-in secret heads
  (1,000 test images, K = 99) gave p < 0.05 for 3 (null heads) and 4 (binomial), accuracy 43.8–53.8 %.

Verdict ``stolen-or-victim`` when p < alpha (0.01). Only meaningful for suspects in the victim's feature
coordinates (copies trained to reproduce its answers); an encoder with its own coordinates scores ~0.5.

>>> binomial_test(90, 100).verdict, binomial_test(50, 100).verdict
('stolen-or-victim', 'independent')
"""
from __future__ import annotations

import torch
from scipy import stats
from torch import nn

from sslaudit.data import ImageData
from sslaudit.features import embed
from sslaudit.ownership.verdict import ALPHA, Verdict
from sslaudit.ownership.watermark import WatermarkHead, random_layers, rotate

NULL_HEADS = 199  # the smallest p is 1/200 = 0.005 < alpha = 0.01


def binomial_test(correct: int, n: int, alpha: float = ALPHA, test: str = "watermark-binomial") -> Verdict:
    """One-sided exact binomial test of ``correct`` of ``n`` against chance (0.5)."""
    p = stats.binomtest(int(correct), int(n), 0.5, alternative="greater").pvalue
    return Verdict.decide(test, statistic=correct / n, p_value=float(p), n=n, alpha=alpha,
                          extra={"correct": int(correct)})


@torch.no_grad()
def rotation_trials(encoder: nn.Module, images: ImageData | torch.Tensor,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(the suspect's float32 features of each image turned by its own k, the rotation class of each)."""
    x = images.images if isinstance(images, ImageData) else images
    x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    k = (torch.arange(len(x)) % 4)[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))]
    return embed(encoder, rotate(x, k), mixed_precision=False), k // 2


@torch.no_grad()
def head_correct(head: WatermarkHead, features: torch.Tensor, labels: torch.Tensor) -> int:
    """How many of the trials ``head`` gets right."""
    return int((head.float()(features.float()).argmax(1) == labels).sum())


def binomial_verdict(head: WatermarkHead, features: torch.Tensor, labels: torch.Tensor,
                     alpha: float = ALPHA) -> Verdict:
    """The head's accuracy on (features, labels), binomial test against 0.5."""
    return binomial_test(head_correct(head, features, labels), len(labels), alpha)


def head_layers(head: WatermarkHead) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``head``'s layers in :func:`random_layers`' batched layout (one head)."""
    return [(m.weight.float()[None], m.bias.float()[None]) for m in head if isinstance(m, nn.Linear)]


@torch.no_grad()
def mean_margins(layers: list[tuple[torch.Tensor, torch.Tensor]], features: torch.Tensor, labels: torch.Tensor,
                 chunk: int = 16) -> torch.Tensor:
    """Per head of the batched ``layers``: the mean over trials of logit(true class) − logit(other class),
    computed ``chunk`` heads at a time as batched matmuls."""
    out, sign = [], (labels * 2 - 1).float()  # +1 where the true class is 1
    for start in range(0, len(layers[0][0]), chunk):
        x = features.float().expand(min(chunk, len(layers[0][0]) - start), -1, -1)
        for i, (weight, bias) in enumerate(layers):
            w, b = weight[start:start + len(x)], bias[start:start + len(x)]
            x = torch.baddbmm(b[:, None, :], x, w.transpose(1, 2))
            x = x.relu() if i < len(layers) - 1 else x
        out.append(((x[..., 1] - x[..., 0]) * sign).mean(1))
    return torch.cat(out)


def null_heads_verdict(head: WatermarkHead, features: torch.Tensor, labels: torch.Tensor, *, heads: int = NULL_HEADS,
                       seed: int = 0, alpha: float = ALPHA) -> Verdict:
    """The head's mean margin ranked among ``heads`` fresh heads of the same random init (public ``seed``)."""
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"heads must be a whole number >= 1 (199 gives p down to 0.005); got {heads!r}")
    null = mean_margins(random_layers(head.dims, heads, torch.Generator().manual_seed(seed + 1)), features, labels)
    margin = float(mean_margins(head_layers(head), features, labels)[0])
    p = (1 + int((null >= margin).sum())) / (heads + 1)
    return Verdict.decide("watermark-null-heads", statistic=margin, p_value=p, n=len(labels), alpha=alpha,
                          extra={"heads": heads, "accuracy": head_correct(head, features, labels) / len(labels),
                                 "null_mean": float(null.mean()), "null_max": float(null.max())})


def verify_watermark(suspect_encoder: nn.Module, head: WatermarkHead, images: ImageData | torch.Tensor, *,
                     seed: int = 0, alpha: float = ALPHA) -> Verdict:
    """Accuracy of ``head`` on the suspect's features of rotated ``images``; binomial test against 0.5."""
    return binomial_verdict(head, *rotation_trials(suspect_encoder, images, seed), alpha)


def verify_watermark_null_heads(suspect_encoder: nn.Module, head: WatermarkHead, images: ImageData | torch.Tensor,
                                *, heads: int = NULL_HEADS, seed: int = 0, alpha: float = ALPHA) -> Verdict:
    """The secret head's mean margin on the suspect's rotation trials, ranked among ``heads`` fresh random heads."""
    return null_heads_verdict(head, *rotation_trials(suspect_encoder, images, seed), heads=heads, seed=seed,
                              alpha=alpha)


def watermark_verdicts(suspect_encoder: nn.Module, head: WatermarkHead, images: ImageData | torch.Tensor, *,
                       heads: int = NULL_HEADS, seed: int = 0, alpha: float = ALPHA) -> list[Verdict]:
    """Both tests on one set of trials (the suspect is queried once)."""
    trials = rotation_trials(suspect_encoder, images, seed)
    return [binomial_verdict(head, *trials, alpha), null_heads_verdict(head, *trials, heads=heads, seed=seed,
                                                                       alpha=alpha)]
