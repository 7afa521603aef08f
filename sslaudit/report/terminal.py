"""The terminal table of a stealing run: victim, honest user, one stolen row per result, random-init floor.

>>> print(results_table(steal_curve(victim, attack, pool, [500, 5000], task)))  # doctest: +SKIP
"""
from __future__ import annotations

from typing import Mapping, Sequence

from sslaudit.report.table import format_table
from sslaudit.result import StealResult

HEADER = ["encoder", "lin 1%", "lin full", "kNN", "cos", "CKA", "transfer 1%/full", "gain 1%/full", "queries",
          "cost", "seconds"]


def as_results(results: StealResult | Mapping | Sequence[StealResult | Mapping]) -> list[StealResult]:
    """One result or several, typed or as dicts (``StealResult.to_dict`` layout), as a list of results."""
    if isinstance(results, (StealResult, Mapping)):
        results = [results]
    return [r if isinstance(r, StealResult) else StealResult.from_dict(r) for r in results]


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _pair(ratios: object) -> str:
    return f"{_num(ratios.linear_1pct)} / {_num(ratios.linear_full)}"


def results_rows(results: StealResult | Mapping | Sequence[StealResult | Mapping],
                 labels: Sequence[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows; ``labels`` name the stolen rows (default: ``stolen (loss, arch)``).

    The victim, honest and floor rows come from the first result (one run shares them). The honest row's
    ratio column is its utility (honest / victim direct); its queries and cost are what it was charged.
    """
    results = as_results(results)
    if not results:
        raise ValueError("no results to render")
    first = results[0]
    v, f, h = first.victim, first.floor, first.honest
    rows = [[f"victim ({v.method}, {v.arch})", _pct(v.scores.linear_1pct), _pct(v.scores.linear_full),
             _pct(v.scores.knn), "1.00", "1.00", "1.00 / 1.00", "1.00 / 1.00", "", "", ""]]
    if h is not None:
        rows.append([f"honest user (account {h.account}, via the API)", _pct(h.scores.linear_1pct),
                     _pct(h.scores.linear_full), _pct(h.scores.knn), "", "", "" if h.utility is None else
                     _pair(h.utility), "", str(h.queries), f"${h.cost:.2f}", ""])
    for i, r in enumerate(results):
        s, q = r.stolen, r.queries
        label = labels[i] if labels is not None else f"stolen ({s.config.get('loss', s.attack)}, {s.arch})"
        rows.append([label, _pct(s.scores.linear_1pct), _pct(s.scores.linear_full), _pct(s.scores.knn),
                     _num(s.fidelity.cosine), _num(s.fidelity.cka), _pair(s.transfer_ratio), _pair(s.gain_recovered),
                     str(q.sent), f"${q.cost:.2f}", "" if s.train_seconds is None else f"{s.train_seconds:.0f}"])
    rows.append([f"random init ({f.arch})", _pct(f.scores.linear_1pct), _pct(f.scores.linear_full),
                 _pct(f.scores.knn), "", "", "", "0.00 / 0.00", "", "", ""])
    return list(HEADER), rows


def results_table(results: StealResult | Mapping | Sequence[StealResult | Mapping],
                  labels: Sequence[str] | None = None) -> str:
    """The aligned plain-text table of :func:`results_rows`."""
    return format_table(*results_rows(results, labels))
