"""Means with 95 % intervals over seeds, and orderings stated only where intervals separate.

A benchmark number is a mean over >= 3 seeds with a Student-t 95 % interval
(n - 1 degrees of freedom: with 3 seeds the half-width is 4.30 standard errors).

>>> m = mean_interval([0.80, 0.84, 0.82])
>>> round(m.mean, 2), round(m.half_width, 3)
(0.82, 0.05)
>>> separated(mean_interval([0.9, 0.91, 0.92]), mean_interval([0.5, 0.52, 0.51]))
True
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy import stats


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values and the half-width of its confidence interval (nan with one value)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def format(self, digits: int = 2) -> str:
        """``0.82 ± 0.05`` (or just the mean when there is one value)."""
        if self.n < 2 or math.isnan(self.half_width):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of ``values`` and the Student-t half-width at ``confidence``."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_interval needs at least one value")
    n = len(vals)
    mean = sum(vals) / n
    if n < 2:
        return Interval(mean, math.nan, n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    return Interval(mean, float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n), n)


def separated(a: Interval, b: Interval) -> bool:
    """True when ``a`` lies entirely above ``b`` (their intervals do not overlap)."""
    return bool(a.n >= 2 and b.n >= 2 and a.low > b.high)
