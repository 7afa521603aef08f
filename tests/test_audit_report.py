"""The audit report: findings follow the rubric, intervals and summary are right, the files are sound."""
from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser

import pytest
from audit_helpers import audit_doc, bench_audit, make_cell, sweep
from click.testing import CliRunner

from sslaudit.cli_report import report
from sslaudit.report.audit_html import audit_html
from sslaudit.report.audit_json import load_audit, write_audit_reports
from sslaudit.report.audit_sections import analyse
from sslaudit.report.cell_groups import cell_groups
from sslaudit.report.findings import findings, severity
from sslaudit.stats import mean_interval


def _severities(doc: dict) -> dict[str, str]:
    return {f.defense: f.severity for f in findings(cell_groups(doc))}


def test_severities_follow_the_rubric() -> None:
    doc = audit_doc(sweep("mse", {500: [0.85, 0.9, 0.88]})  # >= 0.8 under 600 queries
                    + sweep("mse", {600: [0.9, 0.92, 0.91]}, defense="exactly-one-percent")  # not *under* 1 %
                    + sweep("mse", {5000: [0.55, 0.6, 0.5]}, defense="half")
                    + sweep("mse", {500: [0.75, 0.8, 0.79]}, defense="just-below")  # mean 0.78 < 0.8
                    + sweep("mse", {5000: [0.4, 0.45, 0.5]}, defense="stops"))  # mean 0.45 < 0.5
    assert _severities(doc) == {"none": "MAJOR", "exactly-one-percent": "MEDIUM", "half": "MEDIUM",
                                "just-below": "MEDIUM", "stops": "MINOR"}
    assert [f.severity for f in findings(cell_groups(doc))] == ["MAJOR", "MEDIUM", "MEDIUM", "MEDIUM", "MINOR"]


def test_the_rubric_reads_the_victims_training_images() -> None:
    cells = sweep("mse", {900: [0.9, 0.9, 0.9]})
    assert _severities(audit_doc(cells)) == {"none": "MEDIUM"}  # 900 is 1.5 % of 60,000
    assert _severities(audit_doc(cells, config={"victim_training_images": 100_000})) == {"none": "MAJOR"}
    for cell in cells:
        cell["result"]["victim"]["victim_training_images"] = 1_000_000
    assert _severities(audit_doc(cells)) == {"none": "MAJOR"}


def test_group_means_intervals_costs_and_dollars_per_point() -> None:
    gains = [0.6, 0.7, 0.8]
    doc = audit_doc(sweep("mse", {2000: gains}, defense="noise:sigma=1.0", utility=0.9) + [
        make_cell(defense="noise:sigma=1.0", attack="mse", budget=2000, seed=3, gain=0.65, utility=0.8)],
        price_per_1k=2.5)
    (group,) = cell_groups(doc)
    expected = mean_interval(gains + [0.65])
    assert group.n == 4 and group.gain_full.mean == pytest.approx(expected.mean)
    assert group.gain_full.half_width == pytest.approx(expected.half_width)
    assert group.honest_cost_points.mean == pytest.approx(100 * (1 - (0.9 * 3 + 0.8) / 4))
    assert group.cost == pytest.approx(2000 / 1000 * 2.5)  # the audit's price, not the row's
    per_point = [5.0 / (100 * (c["result"]["stolen"]["linear_full"] - c["result"]["floor"]["linear_full"]))
                 for c in doc["cells"]]  # $5.00 for 2,000 queries at $2.50 per 1,000
    assert group.dollars_per_point.mean == pytest.approx(mean_interval(per_point).mean)
    assert group.dollars_per_point.half_width == pytest.approx(mean_interval(per_point).half_width)
    assert severity(group) == "MEDIUM"
    broken = audit_doc(sweep("mse", {500: [0.5, -0.1]}))  # a seed below the floor: no price per point
    assert cell_groups(broken)[0].dollars_per_point is None


def test_summary_names_the_attack_and_the_defence_that_stops_it() -> None:
    doc = audit_doc(sweep("stolenencoder", {500: [0.9, 0.92, 0.88], 5000: [0.99, 1.0, 0.98]})
                    + sweep("stolenencoder", {5000: [0.3, 0.35, 0.25]}, defense="noise:sigma=2.0", utility=0.9)
                    + sweep("stolenencoder", {5000: [0.9, 0.8, 0.85]}, defense="round:decimals=1", utility=0.99))
    (paragraph,) = analyse(doc).summary
    assert "anyone who buys 500 queries ($0.50" in paragraph and "can clone simclr" in paragraph
    assert "the stolenencoder attack recovers 0.90 ±" in paragraph
    assert "noise:sigma=2.0 stops them" in paragraph and "honest users lose 10.0" in paragraph
    assert "round:decimals=1 stops" not in paragraph and "No defence tried stops them" not in paragraph


def test_summary_says_when_no_defence_stops_the_thief() -> None:
    doc = audit_doc(sweep("mse", {5000: [0.9, 0.95, 0.92]})
                    + sweep("mse", {5000: [0.6, 0.55, 0.65]}, defense="noise:sigma=2.0", utility=0.8))
    (paragraph,) = analyse(doc).summary
    assert "No defence tried stops them: even under noise:sigma=2.0" in paragraph
    assert "recovers 0.60 ±" in paragraph and "honest users lose 20.0" in paragraph


def test_summary_does_not_credit_a_defence_when_nothing_needed_stopping() -> None:
    doc = audit_doc(sweep("mse", {5000: [0.3, 0.35, 0.25]})
                    + sweep("mse", {5000: [0.1, 0.15, 0.12]}, defense="noise:sigma=2.0", utility=0.8))
    (paragraph,) = analyse(doc).summary
    assert "no defence is needed to stop them" in paragraph and "honest users lose 20.0" in paragraph
    assert "stops them (" not in paragraph


def test_an_ordering_is_stated_only_where_intervals_separate() -> None:
    apart = audit_doc(sweep("a", {500: [0.9, 0.91, 0.92]}) + sweep("b", {500: [0.3, 0.31, 0.32]}))
    close = audit_doc(sweep("a", {500: [0.9, 0.6, 0.99]}) + sweep("b", {500: [0.8, 0.7, 0.9]}))
    assert "recovers more than b" in analyse(apart).summary[0]
    assert "the strongest attack, a," in analyse(apart).findings[0].text
    assert "recovers more than" not in analyse(close).summary[0]
    assert "b cannot be told apart from it" in analyse(close).summary[0]
    assert "not separable from b" in analyse(close).findings[0].text


def test_real_benchmark_rows_make_one_finding_per_defence() -> None:
    analysis = analyse(bench_audit())
    defenses = {c["defense"] for c in analysis.doc["cells"]}
    assert sorted(f.defense for f in analysis.findings) == sorted(defenses)
    curve = [g for g in analysis.groups if g.defense == "none" and g.attack == "stolenencoder"]
    assert [g.budget for g in curve] == [500, 1000, 2000, 5000] and all(g.n == 3 for g in curve)
    noise = next(f for f in analysis.findings if f.defense == "noise:sigma=0.5")
    assert "Honest users lose 7.7" in noise.text  # (1 - utility) over the three seeds of bench/results


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))


HOSTILE = '<img src="https://evil.example/x.png"> & <script>alert(1)</script>'


def test_html_is_self_contained_and_escapes_the_document() -> None:
    pytest.importorskip("matplotlib")
    ownership = [{"test": "dataset-inference", "statistic": 12.5, "p_value": 1e-6, "verdict": "stolen-or-victim",
                  "n": 10000, "alpha": 0.01, "extra": {}}]
    doc = audit_doc(sweep(HOSTILE, {500: [0.9, 0.8, 0.85], 2000: [0.95, 0.97, 0.96]})
                    + sweep("mse", {5000: [0.4, 0.3, 0.35]}, defense="noise:sigma=2.0", utility=0.9)
                    + [make_cell(attack="mse", budget=5000, ownership=ownership)], name=HOSTILE)
    page = audit_html(doc)
    parser = _Tags()
    parser.feed(page)
    tags = {tag for tag, _ in parser.tags}
    assert not tags & {"script", "img", "iframe", "object", "embed", "style_src"}
    for tag, attrs in parser.tags:
        for name, value in attrs.items():
            assert "://" not in (value or ""), (tag, name, value)
    assert [attrs for tag, attrs in parser.tags if tag == "link"] == [{"rel": "icon", "href": "data:,"}]
    assert "&lt;img src=&quot;https://evil.example/x.png&quot;&gt;" in page
    assert len(re.findall(r"https?://", page)) == len(re.findall(r"&quot;https?://", page)) > 0
    figures = re.findall(r"<svg .*?</svg>", page, flags=re.S)
    assert len(figures) == 2 and all(f.count("<path") > 50 for f in figures)
    assert 'id="gain-curves"' in page and 'id="tradeoff"' in page
    for section in ("summary", "findings", "rubric", "groups", "ownership", "metrics", "provenance"):
        assert f'<section id="{section}">' in page
    assert "1e-06" in page and "MAJOR" in page and "0123456789abcdef" in page


def test_reports_are_written_and_the_json_reads_back(tmp_path) -> None:
    doc = audit_doc(sweep("mse", {500: [0.9, 0.8, 0.85]}) + [make_cell(attack="mse", budget=5000, gain=0.95)])
    doc["cells"][0]["result"]["stolen"]["gain_recovered"]["linear_1pct"] = math.nan
    written = write_audit_reports(doc, md=tmp_path / "r.md", json=tmp_path / "out" / "r.json")
    assert written == [tmp_path / "r.md", tmp_path / "out" / "r.json"]
    text = (tmp_path / "out" / "r.json").read_text()
    assert "NaN" not in text
    assert json.loads(text)["cells"][0]["result"]["stolen"]["gain_recovered"]["linear_1pct"] is None
    back = load_audit(tmp_path / "out" / "r.json")
    assert back["cells"][1] == json.loads(json.dumps(doc["cells"][1]))
    assert analyse(back).findings[0].severity == "MAJOR"
    markdown = (tmp_path / "r.md").read_text()
    for heading in ("## Executive summary", "## Findings", "## Severity rubric", "## Every cell group",
                    "## What the numbers mean", "## Provenance"):
        assert heading in markdown
    assert "| MAJOR | simclr | no defence |" in markdown and "## Ownership verdicts" not in markdown


def test_load_audit_refuses_what_it_cannot_read(tmp_path) -> None:
    wrong = tmp_path / "steal.json"
    wrong.write_text(json.dumps({"schema_version": "sslaudit.steal/1", "cells": []}))
    with pytest.raises(ValueError, match=r"schema_version 'sslaudit.steal/1'; this sslaudit reads 'sslaudit.audit/1'"):
        load_audit(wrong)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        load_audit(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        load_audit(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="no finished cells"):
        analyse(audit_doc([]))


def test_cli_reports_a_document_and_a_store(tmp_path) -> None:
    doc = audit_doc(sweep("mse", {500: [0.9, 0.8, 0.85]}))
    (tmp_path / "audit.json").write_text(json.dumps(doc))
    runner = CliRunner()
    done = runner.invoke(report, [str(tmp_path / "audit.json"), "--md", str(tmp_path / "a.md")])
    assert done.exit_code == 0, done.output
    assert "can clone simclr" in done.output and "MAJOR" in done.output and (tmp_path / "a.md").is_file()

    from sslaudit.grid.store import ResultStore

    store = ResultStore(tmp_path / "audit.sqlite")
    store.set_meta(name="stored", price_per_1k=1.0)
    for cell in doc["cells"]:
        fields = {k: cell[k] for k in ("victim", "defense", "attack", "budget", "seed")}
        store.put(cell["key"], fields, cell["result"], wall_seconds=1.0)
    store.close()
    done = runner.invoke(report, [str(tmp_path / "audit.sqlite"), "--json", str(tmp_path / "a.json")])
    assert done.exit_code == 0, done.output
    assert len(load_audit(tmp_path / "a.json")["cells"]) == 3

    (tmp_path / "wrong.json").write_text(json.dumps({"schema_version": "other"}))
    done = runner.invoke(report, [str(tmp_path / "wrong.json")])
    assert done.exit_code == 1 and done.output.count("\n") == 1 and "schema_version 'other'" in done.output
