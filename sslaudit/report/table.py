"""Plain-text and Markdown tables of a stealing run's results.

>>> print(results_table(report))  # doctest: +SKIP
"""
from __future__ import annotations

from typing import Sequence


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False) -> str:
    """Align ``rows`` under ``header``; as a Markdown table when ``markdown``."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def results_table(reports: dict | Sequence[dict], markdown: bool = False) -> str:
    """Victim, one stolen row per report (budget), random-init floor: probes, kNN, fidelity, gain, cost, time."""
    reports = [reports] if isinstance(reports, dict) else list(reports)
    v, f = reports[0]["victim"], reports[0]["floor"]
    header = ["encoder", "lin 1%", "lin full", "kNN", "cos", "CKA", "transfer 1%/full", "gain 1%/full",
              "queries", "cost", "seconds"]
    rows = [[f"victim ({v['method']}, {v['arch']})", _pct(v["linear_1pct"]), _pct(v["linear_full"]),
             _pct(v["knn"]), "1.00", "1.00", "1.00 / 1.00", "1.00 / 1.00", "", "", ""]]
    for report in reports:
        s, q = report["stolen"], report["queries"]
        tr, gr, fid = s["transfer_ratio"], s["gain_recovered"], s["fidelity"]
        seconds = "" if s["train_seconds"] is None else f"{s['train_seconds']:.0f}"
        rows.append([f"stolen ({s['config'].get('loss', s['attack'])}, {s['arch']})", _pct(s["linear_1pct"]),
                     _pct(s["linear_full"]), _pct(s["knn"]), _num(fid["cosine"]), _num(fid["cka"]),
                     f"{_num(tr['linear_1pct'])} / {_num(tr['linear_full'])}",
                     f"{_num(gr['linear_1pct'])} / {_num(gr['linear_full'])}",
                     str(q["sent"]), f"${q['cost']:.2f}", seconds])
    rows.append([f"random init ({f['arch']})", _pct(f["linear_1pct"]), _pct(f["linear_full"]), _pct(f["knn"]),
                 "", "", "", "0.00 / 0.00", "", "", ""])
    return format_table(header, rows, markdown)
