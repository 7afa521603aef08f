"""The audit report as ONE self-contained HTML page: inline CSS, figures inlined as SVG, no scripts.

The page requests nothing: no script, stylesheet, font or image is loaded from anywhere (the favicon
is an empty ``data:`` URL so a browser does not ask for one), and every string taken from the audit
document is escaped with :func:`html.escape`. Without matplotlib the figures are replaced by a note.

>>> page = audit_html(load_audit("audit.json"))  # doctest: +SKIP
>>> "<script" in page  # doctest: +SKIP
False
"""
from __future__ import annotations

from html import escape
from typing import Any, Callable, Mapping, Sequence

from sslaudit.report.audit_sections import (METRICS, AuditAnalysis, analyse, config_text, group_rows, ownership_rows,
                                            provenance_items, subtitle)
from sslaudit.report.cell_groups import CellGroup
from sslaudit.report.figures import gain_curves_svg, tradeoff_svg
from sslaudit.report.findings import SEVERITIES, finding_rows, rubric_lines

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1d2329;
background:#fff;margin:0;line-height:1.45}
main{max-width:1150px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:32px 0 10px;border-bottom:1px solid #dde1e5;
padding-bottom:4px}.meta{color:#5b6670;margin:0 0 8px}
.summary p{font-size:1.05em;background:#f5f7f9;border-left:4px solid #3b6ea5;padding:10px 14px;margin:8px 0}
table{border-collapse:collapse;font-size:.85em;width:100%;margin:6px 0}.wide{overflow-x:auto}
th,td{border:1px solid #dde1e5;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#eef1f4}tbody tr:nth-child(even){background:#fafbfc}td.num{text-align:right;white-space:nowrap}
.sev{display:inline-block;border-radius:3px;padding:1px 7px;font-weight:600;font-size:.85em;color:#fff}
.sev-MAJOR{background:#c62828}.sev-MEDIUM{background:#e08a00}.sev-MINOR{background:#5f7d8c}
svg.figure{display:block;max-width:100%;height:auto;margin:8px 0}
.caption,.note{color:#5b6670;font-size:.9em}dl{display:grid;grid-template-columns:max-content auto;gap:3px 14px}
dt{font-weight:600}dd{margin:0}pre{background:#f5f7f9;padding:10px;overflow-x:auto;font-size:.8em}
"""
NUMERIC = {"queries", "seeds", "seed", "gain 1 %", "gain full", "transfer 1 %", "transfer full", "CKA",
           "honest cost (points)", "cost", "$ / point", "statistic", "p-value"}


def _cell(header: str, value: str) -> str:
    if header == "severity" and value in SEVERITIES:
        return f'<td><span class="sev sev-{value}">{value}</span></td>'
    css = ' class="num"' if header in NUMERIC else ""
    return f"<td{css}>{escape(value)}</td>"


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An escaped HTML table; a ``severity`` column shows coloured badges."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(h, str(v)) for h, v in zip(header, row)) + "</tr>\n" for row in rows)
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table></div>'


def _figure(draw: Callable[[Sequence[CellGroup]], str], groups: Sequence[CellGroup], caption: str) -> str:
    try:
        svg = draw(groups)
    except ImportError as err:
        return f'<p class="note">{escape(str(err))}</p>'
    except ValueError as err:
        return f'<p class="note">No figure: {escape(str(err))}.</p>'
    return f'{svg}\n<p class="caption">{escape(caption)}</p>'


def _section(anchor: str, title: str, *body: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>\n' + "\n".join(body) + "\n</section>"


def audit_html(doc: Mapping[str, Any] | AuditAnalysis) -> str:
    """The whole report as one HTML page; ``doc`` is an audit document (or its :func:`analyse`)."""
    analysis = doc if isinstance(doc, AuditAnalysis) else analyse(doc)
    doc = analysis.doc
    sections = [
        _section("summary", "Executive summary", '<div class="summary">' +
                 "".join(f"<p>{escape(p)}</p>" for p in analysis.summary) + "</div>"),
        _section("findings", "Findings", html_table(*finding_rows(analysis.findings))),
        _section("rubric", "Severity rubric", "<ul>" + "".join(f"<li>{escape(line)}</li>" for line in rubric_lines())
                 + "</ul>"),
        _section("curves", "Queries → gain recovered", _figure(
            gain_curves_svg, analysis.groups, "Mean gain recovered (full-label probe) over seeds, shaded 95 % "
            "interval; dashed lines at the rubric's 0.5 and 0.8, dotted line at 1 % of the victim's training "
            "images. Victim × defence pairs measured at one budget are in the trade-off figure and the table.")),
        _section("tradeoff", "Defence trade-off", _figure(
            tradeoff_svg, analysis.groups, "Each defence's honest-user utility (x) against the gain recovered by "
            "the strongest attack tried against it (y), with 95 % intervals; no defence sits at utility 1. "
            "Gains are drawn clipped to [-1, 1.5].")),
        _section("groups", "Every cell group", '<p class="note">Means over seeds ± 95 % intervals; costs at the '
                 "audit's price; $ / point: dollars per point of stolen full-label accuracy.</p>",
                 html_table(*group_rows(analysis.groups)))]
    ownership = ownership_rows(doc)
    if ownership is not None:
        sections.append(_section("ownership", "Ownership verdicts", '<p class="note">A p-value below alpha rejects '
                                 "&quot;independent&quot;: the suspect is the victim or derived from it.</p>",
                                 html_table(*ownership)))
    sections += [
        _section("metrics", "What the numbers mean", "<dl>" + "".join(
            f"<dt>{escape(name)}</dt><dd>{escape(text)}</dd>" for name, text in METRICS) + "</dl>"),
        _section("provenance", "Provenance", "<dl>" + "".join(
            f"<dt>{escape(label)}</dt><dd>{escape(value)}</dd>" for label, value in provenance_items(doc)) + "</dl>",
            f"<details><summary>Audit config</summary><pre>{escape(config_text(doc))}</pre></details>")]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n<link rel="icon" href="data:,">\n'
            f"<title>{escape(analysis.title)}</title>\n<style>{CSS}</style></head>\n<body><main>\n"
            f"<h1>{escape(analysis.title)}</h1>\n<p class=\"meta\">{escape(subtitle(doc))}</p>\n"
            + "\n".join(sections) + "\n</main></body></html>\n")
