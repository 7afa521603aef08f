"""The audit report's figures, as SVG text ready to inline in an HTML page (matplotlib, imported lazily).

:func:`gain_curves_svg` draws queries → gain recovered (full-label probe) per attack, with the 95 %
interval as a band, one panel per victim × defence measured at two budgets or more (all of them when
none is); :func:`tradeoff_svg` draws each defence's honest-user utility against the gain the strongest
attack keeps, with interval error bars. Text is drawn as paths and element ids carry a per-figure
prefix, so the SVG needs no font and several can share one page.

>>> svg = gain_curves_svg(cell_groups(load_audit("audit.json")))  # doctest: +SKIP
>>> svg.startswith("<svg")  # doctest: +SKIP
True
"""
from __future__ import annotations

import io
import math
import re
from typing import Any, Sequence

from sslaudit.report.cell_groups import CellGroup, defense_label, honest_utility
from sslaudit.report.findings import RUBRIC, STOPPING_GAIN, strongest
from sslaudit.stats import Interval

Y_LIMITS = (-1.0, 1.5)  # a gain outside this (a defence that wrecks the features) is drawn at the edge
STYLE = {"svg.fonttype": "path", "svg.hashsalt": "sslaudit-report", "font.size": 8, "axes.titlesize": 8,
         "axes.labelsize": 8, "legend.fontsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7}
MARKERS = "osD^vP*Xh<>p"


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("the report's figures need matplotlib: pip install 'sslaudit[bench]'") from err
    return matplotlib


def inline_svg(svg: str, prefix: str, scale: float = 1.4) -> str:
    """``svg`` without its XML prolog, doctype, comments and namespace URLs (an HTML page's inline ``<svg>``
    needs none), every id and reference to one prefixed with ``prefix``, drawn ``scale`` times its size."""
    svg = re.sub(r"<!--.*?-->", "", svg[svg.index("<svg"):], flags=re.S)  # matplotlib's text as comments
    svg = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", svg)
    svg = re.sub(r'(\sid=")([^"]+")', rf"\1{prefix}-\2", svg)
    svg = re.sub(r'(href="#)([^"]+")', rf"\1{prefix}-\2", svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", svg)
    svg = re.sub(r'^<svg\s+width="([\d.]+)pt"\s+height="([\d.]+)pt"',
                 lambda m: f'<svg width="{float(m[1]) * scale:.1f}pt" height="{float(m[2]) * scale:.1f}pt"', svg)
    return svg.replace("<svg", f'<svg class="figure" id="{prefix}"', 1)


def _to_svg(fig: Any, prefix: str) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight",
                metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    return inline_svg(buffer.getvalue(), prefix)


def _clip(value: float) -> float:
    return min(max(value, Y_LIMITS[0]), Y_LIMITS[1])


def _half(interval: Interval | None) -> float:
    return 0.0 if interval is None or math.isnan(interval.half_width) else interval.half_width


def _thresholds(ax: Any) -> None:
    for level in sorted({RUBRIC[0].min_gain, STOPPING_GAIN}):
        ax.axhline(level, color="0.6", linewidth=0.6, linestyle="--", zorder=0)
    ax.set_ylim(*_limits(ax))
    ax.grid(True, linewidth=0.3, color="0.85")


def _limits(ax: Any) -> tuple[float, float]:
    low, high = ax.get_ylim()
    return max(min(low, -0.1), Y_LIMITS[0]), min(max(high, 1.1), Y_LIMITS[1])


def _panels(groups: Sequence[CellGroup]) -> list[list[CellGroup]]:
    pairs: dict[tuple[str, str], list[CellGroup]] = {}
    for group in groups:
        if group.gain_full is not None:
            pairs.setdefault((group.victim, group.defense), []).append(group)
    curves = [gs for gs in pairs.values() if len({g.budget for g in gs}) >= 2]
    return curves or list(pairs.values())


def gain_curves_svg(groups: Sequence[CellGroup], columns: int = 3) -> str:
    """Queries → mean gain recovered (full-label probe) per attack, 95 % interval bands, dashed lines at the
    rubric's thresholds, a dotted line at the MAJOR rule's query fraction."""
    matplotlib = _matplotlib()
    from matplotlib.figure import Figure

    panels = _panels(groups)
    if not panels:
        raise ValueError("no cell group has a gain recovered to draw")
    attacks = list(dict.fromkeys(g.attack for gs in panels for g in gs))
    colors = {a: matplotlib.colormaps["tab10"](i % 10) for i, a in enumerate(attacks)}
    cols = min(columns, len(panels))
    rows = math.ceil(len(panels) / cols)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(3.4 * cols, 2.6 * rows + 0.4), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, panel in zip(axes.flat, panels):
            for attack in dict.fromkeys(g.attack for g in panel):
                line = sorted((g for g in panel if g.attack == attack), key=lambda g: g.budget)
                x = [g.budget for g in line]
                y = [_clip(g.gain_full.mean) for g in line]
                half = [_half(g.gain_full) for g in line]
                ax.plot(x, y, marker="o", markersize=2.5, linewidth=1, color=colors[attack], label=attack)
                ax.fill_between(x, [_clip(v - h) for v, h in zip(y, half)], [_clip(v + h) for v, h in zip(y, half)],
                                color=colors[attack], alpha=0.18, linewidth=0)
            ax.set_xscale("log")
            budgets = sorted({g.budget for g in panel})
            ax.set_xticks(budgets, [f"{b:,}" for b in budgets])
            ax.minorticks_off()
            ax.axvline(RUBRIC[0].max_query_fraction * panel[0].training_images, color="0.6", linewidth=0.6,
                       linestyle=":", zorder=0)
            ax.set_title(f"{panel[0].victim} · {defense_label(panel[0].defense)}")
            ax.set_xlabel("queries")
            ax.set_ylabel("gain recovered (full-label probe)")
            _thresholds(ax)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        handles = [matplotlib.lines.Line2D([], [], color=colors[a], marker="o", markersize=3) for a in attacks]
        fig.legend(handles, attacks, loc="outside lower center", ncols=min(len(attacks), 4), frameon=False)
        return _to_svg(fig, "gain-curves")


def tradeoff_points(groups: Sequence[CellGroup]) -> list[tuple[str, str, Interval, CellGroup]]:
    """(victim, defence, honest utility, the strongest attack's group) per defence whose honest utility is
    known; no defence counts as utility 1 (honest users get the victim's own features)."""
    pairs: dict[tuple[str, str], list[CellGroup]] = {}
    for group in groups:
        if group.gain_full is not None:
            pairs.setdefault((group.victim, group.defense), []).append(group)
    points = []
    for (victim, defense), pair in pairs.items():
        utility = honest_utility(pair) if defense != "none" else Interval(1.0, math.nan, 1)
        if utility is not None:
            points.append((victim, defense, utility, strongest(pair)))
    return points


def tradeoff_svg(groups: Sequence[CellGroup]) -> str:
    """Honest utility (x) against the gain the strongest attack keeps (y): one panel per victim, one marker
    per defence (the same across panels), named in the legend."""
    matplotlib = _matplotlib()
    from matplotlib.figure import Figure

    points = tradeoff_points(groups)
    if not points:
        raise ValueError("no defence has both an honest utility and a gain recovered to draw")
    victims = list(dict.fromkeys(p[0] for p in points))
    defenses = list(dict.fromkeys(p[1] for p in points))
    colors = matplotlib.colormaps["tab20" if len(defenses) > 10 else "tab10"]
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(4.2 * len(victims) + 1.8, 3.4), layout="constrained")
        axes = fig.subplots(1, len(victims), squeeze=False, sharey=True)[0]
        for ax, victim in zip(axes, victims):
            for _, defense, utility, best in (p for p in points if p[0] == victim):
                i = defenses.index(defense)
                ax.errorbar([utility.mean], [_clip(best.gain_full.mean)], xerr=[_half(utility)],
                            yerr=[_half(best.gain_full)], fmt=MARKERS[i % len(MARKERS)], markersize=4.5,
                            linewidth=0.8, capsize=2, color=colors(i % colors.N))
            ax.set_title(victim)
            ax.set_xlabel("honest user's utility (honest / victim, full-label probe)")
            _thresholds(ax)
        axes[0].set_ylabel("gain the strongest attack keeps (full-label probe)")
        handles = [matplotlib.lines.Line2D([], [], linestyle="", marker=MARKERS[i % len(MARKERS)],
                                           color=colors(i % colors.N)) for i in range(len(defenses))]
        fig.legend(handles, [defense_label(d) for d in defenses], loc="outside right upper", frameon=False)
        return _to_svg(fig, "tradeoff")
