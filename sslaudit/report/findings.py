"""The audit's findings: severities (Giskard's MAJOR / MEDIUM / MINOR) from a rubric written as data.

A group of cells (:class:`~sslaudit.report.cell_groups.CellGroup`) takes the first :data:`RUBRIC` rule
it meets, judged on the mean over seeds of the gain recovered on the full-label probe. There is one
finding per (victim, defence): the worst of its groups sets the severity, and the finding says what the
thief keeps and, for a defence, what it costs honest users. An ordering ("the strongest attack") is
stated only where the 95 % intervals separate.

>>> RUBRIC[0].severity, RUBRIC[0].min_gain, RUBRIC[0].max_query_fraction
('MAJOR', 0.8, 0.01)
>>> [f.severity for f in findings(cell_groups(load_audit("audit.json")))]  # doctest: +SKIP
['MAJOR', 'MEDIUM', 'MINOR']
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from sslaudit.report.cell_groups import CellGroup, defense_label, honest_cost_points
from sslaudit.stats import Interval, separated

SEVERITIES = ("MAJOR", "MEDIUM", "MINOR")  # most severe first


@dataclass(frozen=True)
class Rule:
    """A group is ``severity`` when its mean full-label gain is >= ``min_gain`` (None: any) with a budget
    under ``max_query_fraction`` of the victim's training images (None: any budget)."""

    severity: str
    min_gain: float | None
    max_query_fraction: float | None

    def applies(self, group: CellGroup) -> bool:
        if self.min_gain is not None and gain(group) < self.min_gain:
            return False
        return self.max_query_fraction is None or group.query_fraction < self.max_query_fraction

    def describe(self) -> str:
        if self.min_gain is None:
            return "otherwise: no attack recovers enough of the gain to meet a rule above"
        budget = ("at any budget" if self.max_query_fraction is None else
                  f"with fewer queries than {100 * self.max_query_fraction:g} % of the images the victim "
                  "was trained on")
        return (f"a thief recovers at least {self.min_gain:g} of the victim's gain (full-label probe, "
                f"mean over seeds) {budget}")


RUBRIC = (Rule("MAJOR", 0.8, 0.01), Rule("MEDIUM", 0.5, None), Rule("MINOR", None, None))
STOPPING_GAIN = 0.5  # a defence stops the thief when every attack and budget tried keeps a mean gain below this


@dataclass(frozen=True)
class Finding:
    """The severity of one (victim, defence), the group that sets it, and the sentence that says why."""

    severity: str
    victim: str
    defense: str
    evidence: CellGroup  # the cheapest group at the severity (MINOR: the one where the thief keeps most)
    text: str


def gain(group: CellGroup) -> float:
    """The mean full-label gain recovered, -inf where it is undefined (so it meets no gain rule)."""
    return -math.inf if group.gain_full is None else group.gain_full.mean


def severity(group: CellGroup) -> str:
    """The severity of the first :data:`RUBRIC` rule ``group`` meets."""
    return next(rule.severity for rule in RUBRIC if rule.applies(group))


def rank(level: str) -> int:
    """0 for MAJOR, 1 for MEDIUM, 2 for MINOR."""
    return SEVERITIES.index(level)


def rubric_lines() -> list[str]:
    """The rubric in words, one line per severity, for the report."""
    return [f"{rule.severity}: {rule.describe()}." for rule in RUBRIC] + [
        f"A defence stops the thief when every attack and budget tried against it keeps a mean gain below "
        f"{STOPPING_GAIN:g}."]


def fmt(interval: Interval | None, digits: int = 2) -> str:
    """``0.82 ± 0.05``, the mean alone with one seed, ``—`` when undefined."""
    return "—" if interval is None else interval.format(digits)


def dollars(amount: float) -> str:
    return f"${amount:,.2f}"


def strongest(groups: Sequence[CellGroup]) -> CellGroup:
    """The group where the thief keeps the most gain (the cheaper one on a tie)."""
    return max(groups, key=lambda g: (gain(g), -g.budget))


def strongest_phrase(groups: Sequence[CellGroup]) -> str:
    """``the strongest attack, A,`` when A's interval lies above every other attack's best, else
    ``the best-scoring attack, A (not separable from B within the 95 % intervals),``."""
    best = strongest(groups)
    rivals = [strongest([g for g in groups if g.attack == a]) for a in dict.fromkeys(g.attack for g in groups)
              if a != best.attack]
    close = [r.attack for r in rivals if r.gain_full is not None and not _above(best, r)]
    if not rivals or not close:
        return f"the strongest attack, {best.attack},"
    return f"the best-scoring attack, {best.attack} (not separable from {', '.join(close)} within the 95 % intervals),"


def _above(a: CellGroup, b: CellGroup) -> bool:
    return a.gain_full is not None and b.gain_full is not None and separated(a.gain_full, b.gain_full)


def _evidence(groups: Sequence[CellGroup], level: str) -> CellGroup:
    at_level = [g for g in groups if severity(g) == level]
    if level == "MINOR":
        return strongest(at_level)
    return min(at_level, key=lambda g: (g.budget, -gain(g)))


def _queries(group: CellGroup) -> str:
    return (f"{group.budget:,} queries ({dollars(group.cost)}, {100 * group.query_fraction:.1f} % of the victim's "
            f"{group.training_images:,} training images)")


def _finding_text(groups: Sequence[CellGroup], evidence: CellGroup) -> str:
    best = strongest(groups)
    text = (f"{strongest_phrase(groups)} keeps {fmt(best.gain_full)} of the gain (full-label probe) "
            f"with {_queries(best)}")
    if evidence is not best:
        text += (f"; {evidence.attack} already recovers {fmt(evidence.gain_full)} with {_queries(evidence)}")
    if not best.defended:
        return f"With no defence, {text}."
    cost = honest_cost_phrase(honest_cost_points(groups))
    return f"{cost[0].upper()}{cost[1:]}; {text}."


def honest_cost_phrase(cost: Interval | None) -> str:
    """``honest users lose 7.7 ± 1.0 points of accuracy (full-label probe)``, or that they lose none, or that
    it was not measured."""
    if cost is None:
        return "its cost to honest users was not measured"
    if round(cost.mean, 1) == 0:
        return "honest users lose no measurable accuracy (full-label probe)"
    if cost.mean < 0:
        return f"honest users lose no accuracy (full-label probe; they gain {-cost.mean:.1f} points)"
    return f"honest users lose {fmt(cost, 1)} points of accuracy (full-label probe)"


def findings(groups: Sequence[CellGroup]) -> list[Finding]:
    """One finding per (victim, defence), most severe first (then in the audit's order)."""
    by_pair: dict[tuple[str, str], list[CellGroup]] = {}
    for group in groups:
        by_pair.setdefault((group.victim, group.defense), []).append(group)
    out = []
    for (victim, defense), pair in by_pair.items():
        level = min((severity(g) for g in pair), key=rank)
        evidence = _evidence(pair, level)
        out.append(Finding(level, victim, defense, evidence, _finding_text(pair, evidence)))
    return sorted(out, key=lambda f: rank(f.severity))


def finding_rows(found: Sequence[Finding]) -> tuple[list[str], list[list[str]]]:
    """The findings table: severity, victim, defence, what was found."""
    return (["severity", "victim", "defence", "finding"],
            [[f.severity, f.victim, defense_label(f.defense), f.text] for f in found])
