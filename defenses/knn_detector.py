"""Stateful k-NN detection of query patterns (Chen, Carlini & Wagner, "Stateful Detection of Black-Box
Adversarial Attacks", ACM AsiaCCS SPAI workshop 2020, arXiv 1907.05587; code schoyc/blackbox-detection).

Per account a buffer of earlier queries' representations; each query's statistic is the mean L2 distance
to its ``k`` (= 50, the paper's) nearest earlier queries of the same account; the account is flagged when
it falls below ``threshold``. What happens then is ``action`` (:mod:`sslaudit.defenses.detection`).

Choices (ours, where the paper differs or is silent):

* Similarity space: the victim's own features as they reach the defence, L2-normalised (distances in
  [0, 2]). The paper trains a separate contrastive similarity encoder; an embedding API already has an
  encoder trained to put augmented views of an image together, for free, and normalising makes the
  threshold independent of the victim's feature scale (SSL encoders are trained on the cosine).
* Threshold: ``threshold=`` explicit, or from ``calibrate(features)`` (the provider's clean features,
  given once by the API): the ``percentile`` (in %, default 0.1 as the paper's ``np.percentile(avg,
  0.1)``) of each clean point's mean distance to its ``k`` nearest other clean points. A denser benign
  set gives smaller distances: calibrate on at least as many images as an account's buffer holds for a
  threshold that stays conservative for heavy honest users. The percentile is per query, as the
  paper's: an account of n queries has n chances to alarm, and users of a narrow task (one class) sit
  denser than the provider's training mix, so the account-level false-positive rate is far higher
  (``bench/results/detection.md`` measures it).
* A query with fewer than ``k`` earlier queries in the buffer is not scored (NaN), as in the paper's
  code: a mean over fewer neighbours is not comparable with a threshold set on ``k``.
* The buffer keeps the ``memory`` (default 10,000) most recent queries; memory is not cleared on an
  alarm (the paper clears it to count repeated detections; we flag an account once).
* Within a batch queries are processed in order: image i sees the buffer and images 0..i-1 of its batch,
  so one call of B images scores exactly as B calls of one image (vectorised, in chunks of rows).

>>> import torch
>>> det = KNNDetector(k=2, threshold=0.05)
>>> base = torch.nn.functional.normalize(torch.randn(1, 16), dim=1)
>>> _ = det("thief", torch.zeros(4, 1, 4, 4), base + 0.001 * torch.randn(4, 16))
>>> det.report("thief").flagged, det.report("thief").first_alarm
(True, 3)
>>> KNNDetector(k=0)
Traceback (most recent call last):
ValueError: knn-detector k must be an int >= 1 (e.g. k=50); got 0
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from sslaudit.defenses.common import integer, number
from sslaudit.defenses.detection import AccountState, StatefulDetector
from sslaudit.registry import register_defense

CHUNK = 512  # query rows per distance block


def pairwise_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||a_i - b_j||`` by one matrix product (float32; clamped at 0 before the square root)."""
    sq = (a * a).sum(1, keepdim=True) + (b * b).sum(1) - 2 * a @ b.T
    return sq.clamp_(min=0).sqrt_()


def knn_mean_distance(points: torch.Tensor, k: int) -> torch.Tensor:
    """Each point's mean distance to its ``k`` nearest other points (the benign statistic)."""
    out = []
    for start in range(0, len(points), CHUNK):
        d = pairwise_l2(points[start:start + CHUNK], points)
        d[torch.arange(len(d)), torch.arange(start, start + len(d))] = math.inf  # not itself
        out.append(d.topk(k, dim=1, largest=False).values.mean(1))
    return torch.cat(out)


@dataclass
class _Buffer(AccountState):
    buffer: torch.Tensor | None = None  # (m, d) unit rows, oldest first, m <= memory


@register_defense("knn-detector")
@dataclass(kw_only=True)
class KNNDetector(StatefulDetector):
    """Flag an account whose queries have ``k`` near neighbours among its own earlier queries."""

    name: ClassVar[str] = "knn-detector"
    k: int = 50
    threshold: float | None = None
    percentile: float = 0.1
    memory: int = 10_000
    _calibrated: float | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.k = integer(self.name, "k", self.k, "k=50")
        self.memory = integer(self.name, "memory", self.memory, "memory=10000")
        if self.memory < self.k:
            raise ValueError(f"knn-detector memory must be >= k (it holds the neighbours); got memory="
                             f"{self.memory}, k={self.k}")
        self.percentile = number(self.name, "percentile", self.percentile, "percentile=0.1", 0.0, maximum=100.0)
        if self.threshold is not None:
            self.threshold = number(self.name, "threshold", self.threshold, "threshold=0.3", 0.0, strict=True)

    def _new_state(self) -> _Buffer:
        return _Buffer()

    def calibrate(self, features: torch.Tensor) -> None:
        """Set the threshold from the provider's clean features (unless ``threshold=`` was given)."""
        super().calibrate(features)
        if self.threshold is not None:
            return
        if len(features) <= self.k:
            raise ValueError(f"knn-detector calibration needs more than k={self.k} clean feature vectors; "
                             f"got {len(features)}")
        stat = knn_mean_distance(F.normalize(features.detach().float(), dim=1), self.k)
        self._calibrated = torch.quantile(stat.double().cpu(), self.percentile / 100).item()

    @property
    def limit(self) -> float | None:
        """The threshold in force: the explicit one, else the calibrated one (None: neither yet)."""
        return self.threshold if self.threshold is not None else self._calibrated

    def _limit(self) -> float:
        if self.limit is None:
            raise ValueError("knn-detector has no threshold: pass threshold= (e.g. threshold=0.3) or calibrate it "
                             "on clean features (SimulatedAPI(calibration=images))")
        return self.limit

    def _scores(self, state: AccountState, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        assert isinstance(state, _Buffer)
        q = F.normalize(features.detach().float(), dim=1)
        old = q.new_empty(0, q.shape[1]) if state.buffer is None else state.buffer.to(q.device)
        cand, m = torch.cat([old, q]), len(old)  # query i sits at m + i and sees [m + i - memory, m + i)
        scores = torch.full((len(q),), math.nan, device=q.device)
        for start in range(0, len(q), CHUNK):
            rows = q[start:start + CHUNK]
            pos = m + torch.arange(start, start + len(rows), device=q.device)
            lo = (pos - self.memory).clamp(min=0)
            c0, c1 = int(lo[0]), int(pos[-1])  # the columns any row of this chunk may see
            if c1 - c0 < self.k:
                continue
            cols = torch.arange(c0, c1, device=q.device)
            seen = (cols >= lo[:, None]) & (cols < pos[:, None])
            d = pairwise_l2(rows, cand[c0:c1]).masked_fill_(~seen, math.inf)
            mean = d.topk(self.k, dim=1, largest=False).values.mean(1)
            scores[start:start + len(rows)] = torch.where(seen.sum(1) >= self.k, mean, math.nan)
        state.buffer = cand[-self.memory:].clone()
        return scores
