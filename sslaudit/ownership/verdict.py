"""The result of one ownership test: the statistic, its p-value and the verdict at ``alpha``.

Every ownership test (dataset inference, Dziedzic et al., NeurIPS 2022; the rotation watermark of
Dziedzic et al., ICML 2022) asks one question of a suspect encoder: is it the victim or derived from
it? The null hypothesis is always "independent"; a p-value below ``alpha`` (the papers' 1 %) rejects
it. ``statistic`` is the test's own effect size (Δ log-likelihood for dataset inference, accuracy for
the watermark), ``n`` the number of samples the p-value rests on.

>>> v = Verdict.decide("dataset-inference", statistic=12.5, p_value=1e-6, n=10000)
>>> v.verdict, v.rejected
('stolen-or-victim', True)
>>> v.line()
'dataset-inference  statistic=12.5  p=1e-06  stolen-or-victim  (n=10000, alpha=0.01)'
>>> Verdict.from_dict(v.to_dict()) == v
True
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

ALPHA = 0.01  # both papers' threshold: "if the p-value is below ... 1 %"
POSITIVE, NEGATIVE = "stolen-or-victim", "independent"


def check_alpha(alpha: float) -> float:
    """``alpha`` if it is a number in (0, 1), else a one-line ValueError saying what to pass."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be a number in (0, 1), e.g. 0.01; got {alpha!r}")
    return float(alpha)


@dataclass(frozen=True)
class Verdict:
    """``test``: its name; ``statistic``: its effect size; ``p_value``: one-sided, against "independent"."""

    test: str
    statistic: float
    p_value: float
    verdict: str
    n: int
    alpha: float = ALPHA
    extra: dict = field(default_factory=dict)

    @classmethod
    def decide(cls, test: str, *, statistic: float, p_value: float, n: int, alpha: float = ALPHA,
               extra: Mapping[str, Any] | None = None) -> "Verdict":
        """The verdict ``stolen-or-victim`` when ``p_value < alpha``, else ``independent`` (NaN p: independent)."""
        alpha = check_alpha(alpha)
        p = float(p_value)
        positive = not math.isnan(p) and p < alpha
        return cls(test, float(statistic), p, POSITIVE if positive else NEGATIVE, int(n), alpha, dict(extra or {}))

    @property
    def rejected(self) -> bool:
        """True when the test rejects "independent"."""
        return self.verdict == POSITIVE

    def line(self) -> str:
        """One printable line: test, statistic, p-value, verdict."""
        return (f"{self.test}  statistic={self.statistic:.4g}  p={self.p_value:.3g}  {self.verdict}  "
                f"(n={self.n}, alpha={self.alpha:g})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Verdict":
        return cls(d["test"], d["statistic"], d["p_value"], d["verdict"], d["n"], d.get("alpha", ALPHA),
                   dict(d.get("extra") or {}))
