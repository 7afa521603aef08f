"""Render the defences benchmark: the trade-off table (honest cost vs thief's gain) and its scatter plot.

Honest cost = the honest account's probe accuracy through the defended API minus the victim's direct
accuracy, in points (negative: the defence hurts honest users). Thief = gain recovered at 5,000
queries, (stolen − floor) / (victim − floor). Every cell is a mean over seeds with a Student-t 95 %
interval; n < 3 is marked.

    python bench/defenses.py --render-only
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Callable

from sslaudit.report.table import format_table
from sslaudit.stats import Interval, mean_interval

METRICS = (("linear_1pct", "1 %"), ("linear_full", "full"))
TARGET_HONEST_COST, TARGET_GAIN = -1.0, 0.5  # the B4B target: ≤ 1 point for honest users, gain < 0.5


def _iv(values: list[float]) -> Interval | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return mean_interval(vals) if vals else None


def precision(row: dict) -> str:
    """The training precision a row's run used (its run info; the first rows predate the field: bf16)."""
    return row["report"].get("run", {}).get("precision", "bfloat16")


def machines_line(rows: list[dict]) -> str:
    """Where the rows ran: the run info's precision tells the two CPUs of this benchmark apart."""
    kinds = sorted({precision(r) for r in rows})
    if kinds == ["bfloat16"]:
        return "AMD EPYC, 2 cores, torch 2.13.0+cpu, autocast bfloat16 (a CPU with avx512_bf16)"
    return ("AMD EPYC, 2 cores, torch 2.13.0+cpu; rows without a mark: autocast bfloat16 (a CPU with "
            "avx512_bf16); rows marked † ran in float32 on an AVX2-only AMD EPYC, 1 torch thread each, two "
            "processes side by side")


def _fmt(iv: Interval | None, digits: int = 2) -> str:
    if iv is None:
        return "—"
    return iv.format(digits) + ("" if iv.n >= 3 else f" (n={iv.n})")


def honest_cost(rows: list[dict], metric: str) -> Interval | None:
    """Honest accuracy − victim direct accuracy (points), one value per seed (the honest user does not
    depend on the attack: a seed measured twice, in two result files, counts once)."""
    per_seed = {r["seed"]: r for r in rows if r["report"].get("honest")}
    return _iv([100 * (r["report"]["honest"][metric] - r["report"]["victim"][metric]) for r in per_seed.values()])


def thief_cost(rows: list[dict], metric: str) -> Interval | None:
    """The stolen encoder's accuracy − the victim's (points): the thief's loss on the same scale as the honest
    user's, for the ICML'22 comparison (does noise hurt honest users about as much as thieves?)."""
    return _iv([100 * (r["report"]["stolen"][metric] - r["report"]["victim"][metric]) for r in rows])


def thief_gain(rows: list[dict], metric: str) -> Interval | None:
    return _iv([r["report"]["stolen"]["gain_recovered"][metric] for r in rows])


def render(rows: list[dict], undefended: list[dict], markdown: Path, figure: Path,
           write_markdown: Callable[..., None]) -> None:
    by_pair: dict[tuple[str, str], list[dict]] = defaultdict(list)
    by_defense: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_pair[(r["defense"], r["attack"])].append(r)
        by_defense[r["defense"]].append(r)
    for r in undefended:
        by_pair[("none", r["spec"])].append(r)
    table, points = [], []
    families = list(dict.fromkeys(d.split(":")[0] for d in by_defense))  # rows of one defence kept together
    order = sorted(by_pair, key=lambda k: (k[0] != "none", families.index(k[0].split(":")[0]) if k[0] in by_defense
                                           else 0, list(by_defense).index(k[0]) if k[0] in by_defense else 0))
    for defense, attack in order:
        group = by_pair[(defense, attack)]
        honest_rows = by_defense.get(defense, [])
        costs = [honest_cost(honest_rows, m) for m, _ in METRICS] if defense != "none" else [
            Interval(0.0, 0.0, 3)] * 2
        gains = [thief_gain(group, m) for m, _ in METRICS]
        met = (costs[1] is not None and gains[1] is not None and costs[1].mean >= TARGET_HONEST_COST
               and gains[1].mean < TARGET_GAIN)
        shown = ["0 (reference)"] * 2 if defense == "none" else [_fmt(c, 1) for c in costs]
        mark = " †" if any(precision(r) == "float32" for r in group) else ""
        table.append([defense, attack + mark, *shown, _fmt(thief_cost(group, "linear_full"), 1),
                      *(_fmt(g) for g in gains), "yes" if met else "no"])
        if costs[1] is not None and gains[1] is not None:
            points.append((defense, attack, costs[1], gains[1]))
    header = ["defence", "attack", "honest Δ 1 % (pts)", "honest Δ full (pts)", "thief Δ full (pts)", "thief gain 1 %",
              "thief gain full", "≤ 1 pt and < 0.5"]
    if not table:
        return
    victim = (rows or undefended)[0]["report"]["victim"]
    notes = (f"Victim {victim['name']}: lin 1% {100 * victim['linear_1pct']:.1f}, lin full "
             f"{100 * victim['linear_full']:.1f}. 5,000 queries of the FMNIST pool per thief; the honest user "
             "sends every task image (60,000 train + 5,000 test) through the same defended API and is probed with "
             "the same fixed protocol. Each seed sets the attack's initialisation, augmentation, pool order and the "
             "deployment secret. The undefended rows come from the curves benchmark (same victim, task, budget, "
             "seeds). Intervals: Student-t 95 % over seeds; a claim that one row beats another is made only where "
             "the intervals separate. The last column is the issue's target (honest cost ≤ 1 point at full "
             "labels while the thief's gain recovered < 0.5), judged on the means. Thief Δ = the stolen encoder's "
             "full-label accuracy minus the victim's, the honest Δ's scale.")
    write_markdown(markdown, "Defences: honest users' cost vs the thief's gain recovered (5,000 queries)",
                   format_table(header, table, markdown=True), notes, machines_line(rows + undefended))
    plot(points, figure)


def plot(points: list[tuple[str, str, Interval, Interval]], figure: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the figure is optional (pip install '.[bench]')
        return
    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = "osD^v<>pP*Xh"
    defenses = list(dict.fromkeys(p[0] for p in points))
    attacks = list(dict.fromkeys(p[1] for p in points))
    for defense, attack, cost, gain in points:  # colour: the defence; marker: the attack
        err = lambda iv: 0 if math.isnan(iv.half_width) else iv.half_width  # noqa: E731
        ax.errorbar(cost.mean, gain.mean, xerr=err(cost), yerr=err(gain),
                    fmt=markers[attacks.index(attack) % len(markers)], color=f"C{defenses.index(defense) % 10}",
                    capsize=3, label=f"{defense} · {attack}")
    ax.axvline(TARGET_HONEST_COST, color="grey", ls=":", lw=1)
    ax.axhline(TARGET_GAIN, color="grey", ls=":", lw=1)
    ax.set_xlabel("honest user's accuracy change, full-label probe (points)")
    ax.set_ylabel("thief's gain recovered, full-label probe")
    ax.set_title("Defences on the tiny SimCLR victim (FMNIST, 5,000 queries)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(figure, dpi=120)
    plt.close(fig)
