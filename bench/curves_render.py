"""Render the curves benchmark: means over seeds with 95 % intervals, orderings only where they separate.

    python bench/curves.py --render-only
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Callable

from sslaudit.report.table import format_table
from sslaudit.stats import Interval, mean_interval, separated

METRICS = (("linear_1pct", "1 % labels"), ("linear_full", "full labels"))
NO_COSINE = {"simreg", "ssl-small"}  # the backbone is not trained in the victim's coordinates: CKA only


def _groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        out[(r["spec"], r["pool"], r.get("schedule", "epochs"), r["budget"])].append(r)
    return out


def _interval(group: list[dict], pick: Callable[[dict], float | None]) -> Interval | None:
    vals = [v for v in (pick(r["report"]) for r in group) if v is not None]
    return mean_interval(vals) if vals else None


def gain(group: list[dict], metric: str) -> Interval:
    """Gain recovered over the seeds; nan where it is undefined (victim == floor) in every seed."""
    got = _interval(group, lambda rep: rep["stolen"]["gain_recovered"][metric])
    return got if got is not None else Interval(math.nan, math.nan, 0)


def _cell(group: list[dict] | None) -> str:
    if not group:
        return ""
    return " / ".join(gain(group, m).format() for m, _ in METRICS) + ("" if len(group) >= 3 else f" (n={len(group)})")


def _ordering(cands: dict[str, list[dict]], metric: str) -> str:
    """The best recipe if its interval separates from every other's, else the recipes tied with it."""
    ranked = sorted(((gain(g, metric), s) for s, g in cands.items()), key=lambda c: -c[0].mean)
    best, name = ranked[0]
    tied = [s for iv, s in ranked[1:] if not separated(best, iv)]
    label = f"{name} ({best.format()})"
    return label if not tied else f"{label}; not separated from {', '.join(tied)}"


def _separated_pairs(cands: dict[str, list[dict]], metric: str) -> str:
    """Every ordered pair 'a > b' whose intervals separate (n ≥ 2 each), or '—'."""
    ivs = {s: gain(g, metric) for s, g in cands.items()}
    pairs = [f"{a} > {b}" for a in ivs for b in ivs if a != b and separated(ivs[a], ivs[b])]
    return ", ".join(pairs) or "—"


def render(rows: list[dict], markdown: Path, figure: Path, write_markdown: Callable[..., None]) -> None:
    if not rows:
        return
    groups = _groups(rows)
    specs = list(dict.fromkeys(r["spec"] for r in rows))
    parts = []
    for pool in dict.fromkeys(r["pool"] for r in rows):
        for schedule in ("epochs", "steps"):
            budgets = sorted({k[3] for k in groups if k[1] == pool and k[2] == schedule and k[3] > 0})
            if not budgets:
                continue
            zero = {s: groups.get((s, pool, "epochs", 0)) for s in specs}
            table = [[s] + [_cell(groups.get((s, pool, schedule, b))) or (_cell(zero[s]) + " *" if zero[s] else "")
                            for b in budgets] for s in specs
                     if any((s, pool, schedule, b) in groups for b in budgets) or zero[s]]
            title = ("the papers' fixed epochs" if schedule == "epochs" else
                     "a longer schedule: epochs × 5,000 / budget (at 500 queries: InfoNCE 1,000 steps of 256, "
                     "MSE 9,000 steps of 32; their fixed schedules take 100 and 900 there, 1,900 and 9,360 at 5,000)")
            parts.append(f"Gain recovered, mean ± 95 % interval over seeds (1 % labels / full labels), pool {pool}, "
                         f"{title}:\n\n" + format_table(["attack"] + [f"{b:,} queries" for b in budgets], table,
                                                        markdown=True))
            order, pairs = [], []
            for b in budgets:
                cands = {s: g for s in specs if (g := groups.get((s, pool, schedule, b)))}
                if cands:
                    order.append([f"{b:,}"] + [_ordering(cands, m) for m, _ in METRICS])
                    pairs.append([f"{b:,}"] + [_separated_pairs(cands, m) for m, _ in METRICS])
            parts.append(f"Best recipe per budget ({pool}, {schedule}); a recipe is named alone only where its "
                         "interval separates from every other's:\n\n"
                         + format_table(["queries", "best at 1 % labels", "best at full labels"], order, markdown=True))
            parts.append(f"Every ordering the intervals support ({pool}, {schedule}):\n\n"
                         + format_table(["queries", "1 % labels", "full labels"], pairs, markdown=True))
    summary = list(parts)
    parts.append("Every cell, mean ± 95 % interval over seeds:\n\n" + format_table(*_detail(groups), markdown=True))
    v, fl = rows[0]["report"]["victim"], rows[0]["report"]["floor"]
    spread = mean_interval([r["report"]["stolen"].get("linear_1pct_spread", 0.0) for r in rows])
    seeds = sorted({r["seed"] for r in rows})
    floors = {r["seed"]: r["report"]["floor"] for r in rows}
    floor_text = ", ".join(f"{label} {mean_interval([100 * f[m] for f in floors.values()]).format(1)}"
                           for m, label in (("linear_1pct", "lin 1%"), ("linear_full", "lin full"), ("knn", "kNN")))
    notes = (f"Victim {v['name']}: lin 1% {100 * v['linear_1pct']:.1f}, lin full {100 * v['linear_full']:.1f}, "
             f"kNN {100 * v['knn']:.1f}. Random-init floor ({fl['arch']}, built with each run's seed): {floor_text} "
             f"over the seeds. Seeds {seeds}: "
             "each seed sets the attack's initialisation, augmentation and pool order; the victim is fixed. "
             "Gain recovered = (stolen − floor) / (victim − floor); intervals are Student-t 95 % over seeds. "
             "The 1 % probe chooses its L2 by 5-fold cross-validation over the 600 labels and scores the mean over "
             "5 draws of the 600 labels; the standard deviation over those draws averages "
             f"{100 * spread.mean:.2f} points per encoder (column 'draws sd'). Probes train on FMNIST train labels "
             "and test on FMNIST test[5000:], never queried. * = zero-query baseline (SSL-Small trains on the pool "
             "itself). Cosine is left out where the stolen backbone is not trained in the victim's coordinates "
             "(SimReg's head, SSL-Small): CKA only there.")
    title = "Queries → quality curves against the tiny SimCLR victim"
    write_markdown(markdown, title, "\n\n".join(parts), notes)
    write_markdown(markdown.with_name(markdown.stem + "_summary.md"), title, "\n\n".join(summary),
                   notes + f" Every metric of every cell: `bench/results/{markdown.name}`.")
    plot(groups, specs, figure)


def _detail(groups: dict[tuple, list[dict]]) -> tuple[list[str], list[list[str]]]:
    header = ["attack", "pool", "schedule", "queries", "seeds", "lin 1%", "draws sd", "lin full", "kNN", "cos", "CKA",
              "gain 1%", "gain full", "train s"]
    out = []
    for (spec, pool, schedule, budget), g in groups.items():
        pct = lambda key: _interval(g, lambda rep: 100 * rep["stolen"][key]).format(1)  # noqa: E731
        cos = _interval(g, lambda rep: rep["stolen"]["fidelity"]["cosine"])
        secs = _interval(g, lambda rep: rep["stolen"]["train_seconds"])
        out.append([spec, pool, schedule, str(budget), str(len(g)), pct("linear_1pct"),
                    f"{_interval(g, lambda rep: 100 * rep['stolen'].get('linear_1pct_spread', 0.0)).mean:.2f}",
                    pct("linear_full"), pct("knn"),
                    "—" if cos is None or spec.split(":")[0] in NO_COSINE else cos.format(),
                    _interval(g, lambda rep: rep["stolen"]["fidelity"]["cka"]).format(),
                    gain(g, "linear_1pct").format(), gain(g, "linear_full").format(),
                    "" if secs is None else f"{secs.mean:.0f}"])
    return header, out


def plot(groups: dict[tuple, list[dict]], specs: list[str], figure: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'); skipping the figure")
        return
    panels = sorted({(k[1], k[2]) for k in groups if k[3] > 0})
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 4 * len(panels)), squeeze=False)
    for i, (pool, schedule) in enumerate(panels):
        for j, (metric, label) in enumerate(METRICS):
            ax = axes[i][j]
            for spec in specs:
                pts = sorted((k[3], gain(g, metric)) for k, g in groups.items()
                             if k[0] == spec and k[1] == pool and k[2] == schedule and k[3] > 0)
                if pts:
                    xs, ivs = zip(*pts)
                    line, = ax.plot(xs, [iv.mean for iv in ivs], marker="o", label=spec)
                    ax.fill_between(xs, [iv.low for iv in ivs], [iv.high for iv in ivs], alpha=0.15,
                                    color=line.get_color())
                elif (zero := groups.get((spec, pool, "epochs", 0))):
                    ax.axhline(gain(zero, metric).mean, linestyle="--", color="black", label=f"{spec} (0 queries)")
            ax.set_xscale("log")
            ticks = sorted({k[3] for k in groups if k[1] == pool and k[2] == schedule and k[3] > 0})
            ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel("queries")
            ax.set_ylabel("gain recovered (mean, 95 % band)")
            ax.set_title(f"{pool}, {schedule}, linear probe with {label}")
            ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(figure, dpi=90)
