"""The executive summary of an audit, in plain words, one paragraph per victim.

It says who can clone the encoder (for how many queries and dollars, recovering how much of what it
learned beyond a random network) and which defence stops the thief (every attack tried keeps a mean
gain below :data:`~sslaudit.report.findings.STOPPING_GAIN`) at what cost to honest users, or that no
defence tried stops them. Orderings are stated only where the 95 % intervals separate.

>>> print("\\n\\n".join(executive_summary(cell_groups(load_audit("audit.json")), 1.0)))  # doctest: +SKIP
"""
from __future__ import annotations

from typing import Sequence

from sslaudit.report.cell_groups import CellGroup, honest_cost_points
from sslaudit.report.findings import (RUBRIC, STOPPING_GAIN, dollars, fmt, gain, honest_cost_phrase, strongest,
                                      strongest_phrase)
from sslaudit.stats import Interval, separated

CLONE_GAIN = RUBRIC[0].min_gain  # "clone": recovering as much as the MAJOR rule asks


def _cheapest_reaching(groups: Sequence[CellGroup], threshold: float) -> CellGroup | None:
    reaching = [g for g in groups if gain(g) >= threshold]
    return min(reaching, key=lambda g: (g.budget, -gain(g))) if reaching else None


def _rivals(best: CellGroup, groups: Sequence[CellGroup]) -> str:
    """How the other attacks at ``best``'s budget compare, stated only where the intervals say so."""
    others = [g for g in groups if g.budget == best.budget and g.attack != best.attack and g.gain_full is not None]
    above = [g.attack for g in others if best.gain_full is not None and separated(best.gain_full, g.gain_full)]
    level = [g.attack for g in others if g.attack not in above]
    sentences = []
    if above:
        sentences.append(f"It recovers more than {', '.join(above)} at that budget (the 95 % intervals separate).")
    if level:
        sentences.append(f"At that budget {', '.join(level)} cannot be told apart from it within the 95 % intervals.")
    return "".join(" " + s for s in sentences)

def _clone_sentence(victim: str, undefended: Sequence[CellGroup], price_per_1k: float) -> str:
    if not undefended:
        return f"The audit tried no undefended API for {victim}."
    price = f"at {dollars(price_per_1k)} per 1,000 queries"
    for threshold, verb in ((CLONE_GAIN, "can clone"), (STOPPING_GAIN, "can recover half of")):
        group = _cheapest_reaching(undefended, threshold)
        if group is not None:
            per_point = ("" if group.dollars_per_point is None else
                         f", {dollars(group.dollars_per_point.mean)} per point of stolen accuracy")
            return (f"With no defence, anyone who buys {group.budget:,} queries ({dollars(group.cost)} {price}; "
                    f"{100 * group.query_fraction:.1f} % of the {group.training_images:,} images it was trained on) "
                    f"{verb} {victim}: the {group.attack} attack recovers {fmt(group.gain_full)} of what the "
                    f"encoder learned beyond a random network (full-label probe{per_point})."
                    + _rivals(group, undefended))
    best = strongest(undefended)
    return (f"With no defence, no attack tried recovers half of what {victim} learned beyond a random network: "
            f"the best, {best.attack}, recovers {fmt(best.gain_full)} (full-label probe) with {best.budget:,} "
            f"queries ({dollars(best.cost)} {price}).")


def _cost_phrase(cost: Interval | None) -> str:
    return f"while {honest_cost_phrase(cost)}" if cost is not None else f"but {honest_cost_phrase(cost)}"


def _defense_sentence(defended: Sequence[CellGroup], undefended: Sequence[CellGroup]) -> str:
    by_defense: dict[str, list[CellGroup]] = {}
    for group in defended:
        by_defense.setdefault(group.defense, []).append(group)
    if not by_defense:
        return "The audit tried no defence."
    if undefended and gain(strongest(undefended)) < STOPPING_GAIN:  # nothing to stop: say what defences cost
        costs = "; ".join(f"{d}: {honest_cost_phrase(honest_cost_points(gs))}" for d, gs in by_defense.items())
        return (f"With no attack reaching half the gain undefended at these budgets, no defence is needed to "
                f"stop them; what each defence tried costs anyway: {costs}.")
    best_attack = {d: strongest(gs) for d, gs in by_defense.items()}
    stopping = [d for d, best in best_attack.items() if gain(best) < STOPPING_GAIN]
    if not stopping:
        closest = min(by_defense, key=lambda d: gain(best_attack[d]))
        best = best_attack[closest]
        return (f"No defence tried stops them: even under {closest}, {strongest_phrase(by_defense[closest])} "
                f"still recovers {fmt(best.gain_full)} of the gain with {best.budget:,} queries, "
                f"{_cost_phrase(honest_cost_points(by_defense[closest]))}.")
    costs = {d: honest_cost_points(by_defense[d]) for d in stopping}
    stopping.sort(key=lambda d: (costs[d] is None, costs[d].mean if costs[d] is not None else 0.0))
    first = stopping[0]
    text = (f"{first} stops them (the best attack against it keeps {fmt(best_attack[first].gain_full)} of the "
            f"gain) {_cost_phrase(costs[first])}.")
    for other in stopping[1:]:
        cheaper = costs[first] is not None and costs[other] is not None and separated(costs[other], costs[first])
        relation = (f"{first} costs honest users less (the 95 % intervals separate)" if cheaper else
                    "their costs to honest users cannot be told apart within the 95 % intervals")
        text += f" {other} also stops them, {_cost_phrase(costs[other])}; {relation}."
    return text


def executive_summary(groups: Sequence[CellGroup], price_per_1k: float) -> list[str]:
    """One plain-language paragraph per victim, in the audit's order."""
    paragraphs = []
    for victim in dict.fromkeys(g.victim for g in groups):
        mine = [g for g in groups if g.victim == victim]
        undefended = [g for g in mine if not g.defended]
        defended = [g for g in mine if g.defended]
        paragraphs.append(f"{_clone_sentence(victim, undefended, price_per_1k)} "
                          f"{_defense_sentence(defended, undefended)}")
    return paragraphs
