"""PRADA (Juuti, Szyller, Marchal & Asokan, "PRADA: Protecting against DNN Model Stealing Attacks",
IEEE EuroS&P 2019; reference code: Aalto SSG's release, ``growing_set.GrowingDistanceAgent`` served with
``dist_metric=l2, thr_update_rule=mean_dif_std``), adapted to an embedding API.

As the reference code, per account: the first query starts a growing set G, with threshold T = 0 and
joined-distance list ``[0]``; each later query x gets ``d_min = min_{g in G} ||x - g||``, appended to the
distance list D; if ``d_min > T``, x joins G, d_min joins the joined-distance list and
``T = max(T, mean - std)`` of that list (``mean_dif_std``: its body is not in the code read, inferred
from the name [INFER]; std with ddof 0, numpy's). The leading 0 matters: without it T would jump to the
first distance and G would stop growing. When the number of queries processed before this one is a
multiple of 10 (queries 1, 11, 21, ...), D's points within 3 std of its mean are kept
(``reject_outliers(m=3)``; none if D is constant) and, when more than 100 remain, the statistic is the
Shapiro-Wilk W of them (``scipy.stats.shapiro``); the account is flagged when ``W < delta``. Other
queries are not scored (NaN). The reference's alarm is re-decided at every test; ours sticks (an
account is flagged once, :mod:`sslaudit.defenses.detection`).

Choices (ours):

* No classes: an encoder returns no label, so there is one growing set per account, not one per predicted
  class. Grouping by a coarse bucket of the returned embedding mostly changes which set a query joins,
  not its nearest earlier query (already a neighbour in feature space), and would need a clustering fit
  and a bucket count to choose; one set keeps PRADA's statistic with no extra setting.
* ``space="features"`` (default): distances between the L2-normalised features reaching the defence, as
  the ``knn-detector``; ``space="pixels"``: raw L2 between the flattened images, as the paper.
* ``delta``: explicit, or from ``calibrate(features)``: 100 benign accounts of 500 queries each (or
  all of them, if fewer), random samples (drawn from the deployment secret) of the provider's clean
  features, are run through the same code, and delta is the ``percentile`` (in %, default 0.1) of the
  accounts' smallest W. Per account, not per test: W is recomputed every 10 queries on a growing list,
  so an account's values are strongly correlated and its minimum falls early (near 100 distances);
  an account-level false-positive rate is a quantile of those minima. The paper tunes delta on benign
  traffic (recalled as about 0.9-0.96 [RECALL]). Calibration sees features only, so
  ``space="pixels"`` needs an explicit ``delta``.
* The growing set and D grow with the account's queries, as in the paper (no cap).

>>> import torch
>>> det = PRADA(delta=0.9)
>>> base = torch.randn(50, 32, generator=torch.Generator().manual_seed(0))
>>> stream = torch.cat([base, base[:1] + 1e-3 * base[1:].repeat(3, 1)])  # 150 near-copies of G's first member
>>> _ = det("thief", torch.zeros(200, 1, 4, 4), stream)
>>> det.report("thief").flagged
True
>>> PRADA(space="pixels")
Traceback (most recent call last):
ValueError: prada space=pixels needs an explicit delta (calibration sees features, not images), e.g. delta=0.95
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import shapiro

from sslaudit.defenses.common import choice, number
from sslaudit.defenses.detection import AccountState, StatefulDetector
from sslaudit.defenses.knn_detector import pairwise_l2
from sslaudit.registry import register_defense

TEST_EVERY = 10  # queries between Shapiro-Wilk tests
MIN_DISTANCES = 100  # W only once more than this many distances remain after outlier rejection
CALIBRATION_ACCOUNTS = 100
CALIBRATION_QUERIES = 500


@dataclass
class _Growing(AccountState):
    grown: torch.Tensor | None = None  # G, (|G|, d)
    threshold: float = 0.0  # T
    joined: int = 1  # the joined-distance list: its length (the leading 0), sum and sum of squares
    joined_sum: float = 0.0
    joined_sq: float = 0.0
    dmins: list[float] = field(default_factory=list)  # D
    counted: int = 0  # queries processed before this one (the every-10 clock)


def shapiro_w(dmins: list[float]) -> float:
    """PRADA's test statistic on D (NaN when too few distances remain after outlier rejection)."""
    d = np.asarray(dmins, dtype=np.float64)
    d = d[np.abs(d - d.mean()) < 3 * d.std()]  # constant D: nothing kept, no test (as the reference)
    if len(d) <= MIN_DISTANCES:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns that p is inaccurate above 5,000 points; W is not
        return float(shapiro(d).statistic)


@register_defense("prada")
@dataclass(kw_only=True)
class PRADA(StatefulDetector):
    """Flag an account whose minimum distances to its growing set stop looking normally distributed."""

    name: ClassVar[str] = "prada"
    delta: float | None = None
    space: str = "features"
    percentile: float = 0.1
    _calibrated: float | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.space = choice(self.name, "space", self.space, ("features", "pixels"))
        self.percentile = number(self.name, "percentile", self.percentile, "percentile=0.1", 0.0, maximum=100.0)
        if self.delta is not None:
            self.delta = number(self.name, "delta", self.delta, "delta=0.95", 0.0, strict=True, maximum=1.0)
        elif self.space == "pixels":
            raise ValueError("prada space=pixels needs an explicit delta (calibration sees features, not images), "
                             "e.g. delta=0.95")

    def _new_state(self) -> _Growing:
        return _Growing()

    @property
    def limit(self) -> float | None:
        """The delta in force: the explicit one, else the calibrated one (None: neither yet)."""
        return self.delta if self.delta is not None else self._calibrated

    def _limit(self) -> float:
        if self.limit is None:
            raise ValueError("prada has no delta: pass delta= (e.g. delta=0.95) or calibrate it on clean features "
                             "(SimulatedAPI(calibration=images))")
        return self.limit

    def calibrate(self, features: torch.Tensor) -> None:
        """Set delta from benign streams of the provider's clean features (unless ``delta=`` was given)."""
        super().calibrate(features)
        if self.delta is not None:
            return
        if len(features) <= MIN_DISTANCES + TEST_EVERY:
            raise ValueError(f"prada calibration needs more than {MIN_DISTANCES + TEST_EVERY} clean feature "
                             f"vectors; got {len(features)}")
        gen = self._deployment_secret().generator("prada-calibration", "")
        minima = []
        for _ in range(CALIBRATION_ACCOUNTS):
            order = torch.randperm(len(features), generator=gen)[:CALIBRATION_QUERIES]
            scores = self._scores(_Growing(), features[:0], features[order].float())
            minima += [scores[~scores.isnan()].min()] if not scores.isnan().all() else []
        if not minima:
            raise ValueError("prada calibration produced no W (too few distances left after outlier rejection); "
                             "give more clean images or pass delta=")
        self._calibrated = torch.quantile(torch.stack(minima).double(), self.percentile / 100).item()

    def _vectors(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if self.space == "pixels":
            return images.detach().float().flatten(1)
        return F.normalize(features.detach().float(), dim=1)

    def _scores(self, state: AccountState, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        assert isinstance(state, _Growing)
        x = self._vectors(images, features)
        grown = x.new_empty(0, x.shape[1]) if state.grown is None else state.grown.to(x.device)
        nearest = pairwise_l2(x, grown).min(1).values if len(grown) else torch.full((len(x),), math.inf)
        nearest = nearest.double().cpu().numpy().copy()  # min distance to G, lowered as batch members join
        within = pairwise_l2(x, x).double().cpu().numpy()
        scores, added = np.full(len(x), math.nan), []
        for i in range(len(x)):
            d_min = float(nearest[i])
            if math.isinf(d_min):  # the account's first query starts G
                added.append(i)
            else:
                state.dmins.append(d_min)
                if d_min > state.threshold:
                    added.append(i)
                    state.joined, state.joined_sum, state.joined_sq = (
                        state.joined + 1, state.joined_sum + d_min, state.joined_sq + d_min * d_min)
                    mean = state.joined_sum / state.joined
                    std = math.sqrt(max(state.joined_sq / state.joined - mean * mean, 0.0))
                    state.threshold = max(state.threshold, mean - std)
            if added and added[-1] == i:
                np.minimum(nearest, within[i], out=nearest)
            if state.counted % TEST_EVERY == 0 and len(state.dmins) >= TEST_EVERY:
                scores[i] = shapiro_w(state.dmins)
            state.counted += 1
        if added:
            state.grown = torch.cat([grown, x[added]])
        return torch.from_numpy(scores)
