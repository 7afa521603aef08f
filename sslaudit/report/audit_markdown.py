"""The Markdown audit report: summary, findings, rubric, every cell group, ownership, metrics, provenance.

Markdown cannot carry the figures without external files, so it points to the HTML report for them
(:mod:`sslaudit.report.audit_html`); every table and sentence is the same as there.

>>> print(audit_markdown(load_audit("audit.json")))  # doctest: +SKIP
# Encoder-stealing audit: ...
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from sslaudit.report.audit_sections import (METRICS, AuditAnalysis, analyse, config_text, group_rows, ownership_rows,
                                            provenance_items, subtitle)
from sslaudit.report.findings import finding_rows, rubric_lines
from sslaudit.report.table import format_table


def md_text(text: str) -> str:
    """``text`` safe inside a Markdown table cell or line: no line breaks, pipes and HTML brackets escaped."""
    return " ".join(str(text).split()).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(
        ">", "&gt;")


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return format_table([md_text(h) for h in header], [[md_text(c) for c in row] for row in rows], markdown=True)


def audit_markdown(doc: Mapping[str, Any] | AuditAnalysis) -> str:
    """The whole report as Markdown; ``doc`` is an audit document (or its :func:`analyse`)."""
    analysis = doc if isinstance(doc, AuditAnalysis) else analyse(doc)
    doc = analysis.doc
    parts = [f"# {md_text(analysis.title)}", md_text(subtitle(doc)),
             "## Executive summary", *(md_text(p) for p in analysis.summary),
             "## Findings", md_table(*finding_rows(analysis.findings)),
             "## Severity rubric", "\n".join(f"- {md_text(line)}" for line in rubric_lines()),
             "## Figures", "The queries → gain-recovered curves and the defence trade-off are in the HTML report "
                           "(`sslaudit report ... --html report.html`).",
             "## Every cell group", "Means over seeds ± 95 % intervals; costs at the audit's price.",
             md_table(*group_rows(analysis.groups))]
    ownership = ownership_rows(doc)
    if ownership is not None:
        parts += ["## Ownership verdicts", "A p-value below alpha rejects \"independent\": the suspect is the "
                                           "victim or derived from it.", md_table(*ownership)]
    parts += ["## What the numbers mean",
              "\n".join(f"- **{md_text(name)}**: {md_text(text)}" for name, text in METRICS),
              "## Provenance", "\n".join(f"- {md_text(label)}: {md_text(value)}"
                                         for label, value in provenance_items(doc)),
              "Audit config:", "```json\n" + config_text(doc).replace("```", "` ` `") + "\n```"]
    return "\n\n".join(parts) + "\n"
