"""What the Markdown and HTML audit reports both show, as plain strings: one place for the words and tables.

:func:`analyse` turns an audit document into its :class:`AuditAnalysis` (cell groups, findings, executive
summary); the ``*_rows`` functions give each table's header and rows, :data:`METRICS` the plain-language
meaning of every number, :func:`provenance_items` where and with what the audit ran. The renderers only
escape and lay these out.

>>> analysis = analyse(load_audit("audit.json"))  # doctest: +SKIP
>>> analysis.findings[0].severity  # doctest: +SKIP
'MAJOR'
>>> METRICS[0][0]
'gain recovered'
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from sslaudit.report.cell_groups import CellGroup, cell_groups, defense_label
from sslaudit.report.findings import Finding, dollars, findings, fmt, severity
from sslaudit.report.summary import executive_summary

METRICS = (
    ("gain recovered", "(stolen − floor) / (victim − floor) on a probe's accuracy, where the floor is a randomly "
     "initialised network of the stolen architecture: the share of what the victim learned beyond a random "
     "network that the thief got. 1 is a full copy; 0 is no better than random weights; it can exceed 1 or go "
     "below 0. Reported for the linear probe trained on all labels (full) and on 1 % of them (1 %)."),
    ("transfer ratio", "stolen / victim accuracy on the same probe: how close the copy comes to the original, "
     "without subtracting what a random network already scores."),
    ("CKA", "linear centred kernel alignment between the stolen and the victim's features on the same images: "
     "1 when one is a linear (orthogonal, scaled) map of the other, near 0 when they are unrelated."),
    ("honest cost", "what a defence costs an honest user who buys features through the defended API: "
     "100 × (1 − honest / victim accuracy) on the full-label probe, in points of accuracy."),
    ("dollars per point", "what the thief paid for the queries, at the audit's price, divided by the points of "
     "full-label probe accuracy the stolen encoder gains over the random-init floor."),
    ("± (interval)", "the 95 % Student-t confidence interval of the mean over seeds (n − 1 degrees of freedom); "
     "a single seed shows the mean alone. One thing is said to beat another only where the intervals separate."),
)


@dataclass(frozen=True)
class AuditAnalysis:
    """An audit document with its cell groups, findings (most severe first) and executive summary."""

    doc: Mapping[str, Any]
    groups: list[CellGroup]
    findings: list[Finding]
    summary: list[str]

    @property
    def title(self) -> str:
        return f"Encoder-stealing audit: {self.doc.get('name') or 'unnamed'}"


def analyse(doc: Mapping[str, Any]) -> AuditAnalysis:
    """Group the document's cells and derive its findings and summary (ValueError when it has no cells)."""
    groups = cell_groups(doc)
    return AuditAnalysis(doc, groups, findings(groups), executive_summary(groups, float(doc.get("price_per_1k", 1.0))))


def subtitle(doc: Mapping[str, Any]) -> str:
    cells = doc.get("cells") or []
    return (f"{len(cells)} cells · created {doc.get('created', 'unknown')} · "
            f"queries priced at {dollars(float(doc.get('price_per_1k', 1.0)))} per 1,000")


GROUP_HEADER = ["victim", "defence", "attack", "queries", "seeds", "gain 1 %", "gain full", "transfer 1 %",
                "transfer full", "CKA", "honest cost (points)", "cost", "$ / point", "severity"]


def group_rows(groups: Sequence[CellGroup]) -> tuple[list[str], list[list[str]]]:
    """Every (victim, defence, attack, budget) group: means ± 95 % intervals over its seeds."""
    rows = [[g.victim, defense_label(g.defense), g.attack, f"{g.budget:,}", str(g.n), fmt(g.gain_1pct),
             fmt(g.gain_full), fmt(g.transfer_1pct), fmt(g.transfer_full), fmt(g.cka), fmt(g.honest_cost_points, 1),
             dollars(g.cost), "—" if g.dollars_per_point is None else "$" + fmt(g.dollars_per_point, 3),
             severity(g)] for g in groups]
    return list(GROUP_HEADER), rows


def _number(value: Any, spec: str) -> str:
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return str(value)


def ownership_rows(doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """One row per ownership verdict in the document's cells, or None when no cell has any."""
    rows = []
    for cell in doc.get("cells") or []:
        for v in cell.get("ownership") or []:
            rows.append([str(cell.get("victim")), defense_label(str(cell.get("defense", "none"))),
                         str(cell.get("attack")), f"{int(cell.get('budget', 0)):,}", str(cell.get("seed")),
                         str(v.get("test")), _number(v.get("statistic"), ".4g"), _number(v.get("p_value"), ".3g"),
                         f"{v.get('verdict')} (alpha {_number(v.get('alpha', 0.01), 'g')}, n {v.get('n')})"])
    header = ["victim", "defence", "attack", "queries", "seed", "test", "statistic", "p-value", "verdict"]
    return (header, rows) if rows else None


def _plain(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return "unknown" if value is None else str(value)


def provenance_items(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs: the machine's fields, its versions, the commit, when and with what schema."""
    machine = dict(doc.get("machine") or {})
    versions = machine.pop("versions", None) or {}
    commit = machine.pop("commit", None)
    items = [(f"machine {key}", _plain(value)) for key, value in machine.items()]
    items.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or "unknown"))
    items += [("commit", _plain(commit)), ("created", _plain(doc.get("created"))),
              ("schema", _plain(doc.get("schema_version"))), ("cells", str(len(doc.get("cells") or [])))]
    return items


def config_text(doc: Mapping[str, Any]) -> str:
    """The audit's config as indented JSON."""
    return json.dumps(doc.get("config") or {}, indent=2, sort_keys=True, default=str)
