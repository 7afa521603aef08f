"""The Markdown report of a stealing run: the terminal table as Markdown, then one provenance line.

>>> print(results_markdown(steal_curve(victim, attack, pool, [500, 5000], task)))  # doctest: +SKIP
"""
from __future__ import annotations

from typing import Mapping, Sequence

from sslaudit.report.table import format_table
from sslaudit.report.terminal import as_results, results_rows
from sslaudit.result import StealResult


def _values(runs: Sequence[dict], get) -> str:
    """The distinct values of ``get(run)`` over ``runs``, in first-seen order."""
    seen: list[str] = []
    for run in runs:
        value = str(get(run))
        if value not in seen:
            seen.append(value)
    return ", ".join(seen)


def provenance(results: StealResult | Mapping | Sequence[StealResult | Mapping]) -> str:
    """One line from the results' ``run`` records: machine, seed(s), versions, commit(s), defences, task."""
    results = as_results(results)
    runs = [r.run for r in results]
    machine = _values(runs, lambda r: f"{r.get('device')} ({r.get('cpu')}, {r.get('threads')} threads, "
                                      f"{r.get('precision')})")
    versions = _values(runs, lambda r: ", ".join(f"{k} {v}" for k, v in (r.get("versions") or {}).items()))
    commits = _values(runs, lambda r: (r.get("commit") or "unknown")[:12])
    defenses = _values(results, lambda r: ", ".join(d.get("name", "?") for d in r.defenses) or "none")
    return (f"Run on {machine}; seed {_values(runs, lambda r: r.get('seed'))}; {versions}; commit {commits}; "
            f"task {_values(results, lambda r: r.task)}; defences: {defenses}; schema "
            f"{_values(results, lambda r: r.schema_version)}.")


def results_markdown(results: StealResult | Mapping | Sequence[StealResult | Mapping],
                     labels: Sequence[str] | None = None) -> str:
    """The results table (:func:`sslaudit.report.terminal.results_rows`) in Markdown, with its provenance."""
    return format_table(*results_rows(results, labels), markdown=True) + "\n\n" + provenance(results)
