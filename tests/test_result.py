"""The typed, versioned result: today's dict layout, round trips, JSON, and its renderers."""
from __future__ import annotations

import json
import math
import os
from dataclasses import replace

import pytest

import sslaudit.report.json as report_json
from sslaudit.audit import steal, steal_curve
from sslaudit.report.json import from_json, to_json, write_json
from sslaudit.report.markdown import provenance, results_markdown
from sslaudit.report.terminal import results_table
from sslaudit.result import SCHEMA_VERSION, EncoderScores, HonestScores, Ratios, StealResult
from test_honest import CopyAttack, banded, tiny_task, tiny_victim

SCORES = {"linear_1pct": 0.8, "linear_1pct_spread": 0.01, "linear_full": 0.9, "knn": 0.85}
RATIOS = {"linear_1pct": 0.5, "linear_full": 0.6, "knn": 0.7}
RUN = {"seed": 3, "wall_seconds": 1.5, "device": "cpu", "precision": "float32", "cpu": "x86_64", "threads": 2,
       "versions": {"sslaudit": "0.1.0", "torch": "2.x"}, "commit": "0123456789abcdef", "finished": "2026-12-01"}


def today(**changes) -> dict:
    """A result dict in the layout steal_curve wrote before results were typed."""
    d = {"victim": {"name": "v", "method": "simclr", "arch": "convnet", "parameters": 10, **SCORES},
         "floor": {"arch": "convnet", **SCORES},
         "stolen": {"attack": "DirectExtraction", "config": {"name": "DirectExtraction", "loss": "mse",
                                                             "augment": {"crop_scale": [0.5, 1.0]}},
                    "arch": "convnet", "parameters": 10, **SCORES, "fidelity": {"cosine": 0.9, "cka": 0.8},
                    "transfer_ratio": dict(RATIOS), "gain_recovered": dict(RATIOS), "train_seconds": 12.0,
                    "final_loss": 0.01, "extra": {"teachers": 2}},
         "queries": {"budget": 500, "sent": 500, "cost": 0.5, "account_total": 5000, "calls": 5, "charged": 5.0,
                     "price_per_1k": 1.0, "pool": "fashion-mnist:test[:5000]"},
         "defenses": [{"name": "GaussianNoise", "sigma": 0.1}], "task": "fashion-mnist:probe3", "run": dict(RUN)}
    d.update(changes)
    return d


def test_to_dict_is_todays_layout_plus_the_schema_version():
    result = StealResult.from_dict(today())
    assert result.to_dict() == {**today(), "schema_version": SCHEMA_VERSION}
    assert list(result.to_dict()) == [*today(), "schema_version"]  # and in today's key order
    assert list(result.to_dict()["stolen"]) == list(today()["stolen"])
    assert result.stolen.gain_recovered.linear_full == 0.6 and result.victim.scores.knn == 0.85
    assert StealResult.from_dict(result.to_dict()) == result


def test_rows_written_before_a_field_existed_round_trip_unchanged():
    old = today()
    for row in ("victim", "floor", "stolen"):
        del old[row]["linear_1pct_spread"]
    del old["stolen"]["extra"], old["queries"]["account_total"], old["queries"]["charged"]
    result = StealResult.from_dict(old)
    assert result.queries.account_total is None and result.victim.scores.linear_1pct_spread is None
    assert result.to_dict() == {**old, "schema_version": SCHEMA_VERSION}


def test_honest_scores_ride_along_and_other_schema_versions_are_refused():
    honest = HonestScores("honest", EncoderScores.from_dict(SCORES), 90, 2, 0.09, Ratios(1.0, 0.9, None))
    result = replace(StealResult.from_dict(today()), honest=honest)
    d = result.to_dict()
    assert d["honest"] == {"account": "honest", **SCORES, "queries": 90, "calls": 2, "cost": 0.09,
                           "utility": {"linear_1pct": 1.0, "linear_full": 0.9, "knn": None}}
    assert StealResult.from_dict(d) == result
    with pytest.raises(ValueError, match="sslaudit.steal/2"):
        StealResult.from_dict({**d, "schema_version": "sslaudit.steal/2"})


def test_json_is_strict_versioned_and_reads_back():
    result = StealResult.from_dict(today())
    assert json.loads(to_json(result)) == result.to_dict()
    curve = json.loads(to_json([result, result]))
    assert curve["schema_version"] == SCHEMA_VERSION and len(curve["curve"]) == 2
    assert from_json(to_json([result, result])) == [result, result] and from_json(to_json(result)) == [result]
    broken = StealResult.from_dict(today(stolen={**today()["stolen"], "gain_recovered": {**RATIOS, "knn": math.nan}}))
    text = to_json(broken)
    assert "NaN" not in text and json.loads(text)["stolen"]["gain_recovered"]["knn"] is None


def test_write_json_replaces_atomically(tmp_path, monkeypatch):
    path = tmp_path / "out" / "report.json"
    write_json(path, StealResult.from_dict(today()))
    assert from_json(path.read_text())[0].queries.sent == 500
    before = path.read_text()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_json(path, [StealResult.from_dict(today())] * 2)
    assert path.read_text() == before and sorted(p.name for p in path.parent.iterdir()) == ["report.json"]
    assert report_json.write_json is write_json


def test_terminal_and_markdown_render_one_layout():
    results = [StealResult.from_dict(today()), StealResult.from_dict(today(queries={**today()["queries"],
                                                                                   "sent": 5000}))]
    table = results_table(results)
    assert table.count("stolen (mse, convnet)") == 2 and "victim (simclr, convnet)" in table
    assert "random init (convnet)" in table and "honest" not in table and "0.50 / 0.60" in table
    assert results_table(today()) == results_table(results[0])  # a dict renders like its typed result
    md = results_markdown(results, labels=["mse 500", "mse 5000"])
    assert md.splitlines()[1].startswith("|---") and "| mse 5000 |" in md
    line = provenance(results)
    assert line in md and "seed 3" in line and "0123456789ab" in line and "GaussianNoise" in line
    honest = HonestScores("honest", EncoderScores.from_dict(SCORES), 90, 2, 0.09, Ratios(1.0, 0.9, 1.0))
    assert "honest user" in results_table([replace(r, honest=honest) for r in results])


def test_steal_returns_typed_results_and_no_cosine_outside_victim_coordinates(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLAUDIT_CACHE", str(tmp_path))
    task, victim = tiny_task(), tiny_victim()
    pool = banded(10, 7, "pool")
    result = steal(victim, CopyAttack(_model=victim.encoder), pool, 20, task, price_per_1k=2.0)
    assert isinstance(result, StealResult) and result.honest is None
    assert result.stolen.fidelity.cosine == pytest.approx(1.0) and result.stolen.transfer_ratio.knn == 1.0
    assert result.queries.sent == result.queries.account_total == 20 and result.queries.charged == pytest.approx(0.04)
    d = result.to_dict()
    assert set(d) == set(today()) | {"schema_version"} and set(d["stolen"]) == set(today()["stolen"])
    assert d["stolen"]["extra"] == {"note": [1, 2]} and from_json(to_json(result)) == [result]

    class OwnSpace(CopyAttack):
        victim_coordinates = False

    (other,) = steal_curve(victim, OwnSpace(_model=victim.encoder), pool, [20], task)
    assert other.stolen.fidelity.cosine is None and other.stolen.fidelity.cka == pytest.approx(1.0)
