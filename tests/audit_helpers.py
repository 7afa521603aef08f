"""Audit documents for the report tests: real benchmark rows, and cells whose gains a test chooses."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"


def bench_rows(name: str, limit: int | None = None) -> list[dict]:
    """The first ``limit`` rows of ``bench/results/NAME.jsonl``."""
    lines = (RESULTS / f"{name}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:limit]]


def template() -> dict:
    """A real result with an honest user (noise:sigma=0.5, StolenEncoder, 5,000 queries, seed 0)."""
    row = next(r for r in bench_rows("defenses_part1") if r["report"].get("honest") is not None)
    return row["report"]


def cell_from(result: dict, *, victim: str, defense: str, attack: str, budget: int, seed: int,
              ownership: list | None = None) -> dict:
    key = hashlib.sha256(f"{victim}|{defense}|{attack}|{budget}|{seed}".encode()).hexdigest()
    cell = {"key": key, "victim": victim, "defense": defense, "attack": attack, "budget": budget, "seed": seed,
            "wall_seconds": 12.5, "result": result}
    if ownership is not None:
        cell["ownership"] = ownership
    return cell


def make_cell(*, victim: str = "simclr", defense: str = "none", attack: str = "mse", budget: int = 500,
              seed: int = 0, gain: float = 0.9, utility: float | None = None, price_per_1k: float = 1.0,
              ownership: list | None = None) -> dict:
    """A cell whose full-label gain recovered is ``gain`` (its accuracies consistent with it) and whose honest
    utility is ``utility`` (no honest user when None)."""
    result = copy.deepcopy(template())
    victim_acc, floor_acc = result["victim"]["linear_full"], result["floor"]["linear_full"]
    stolen = result["stolen"]
    stolen["linear_full"] = floor_acc + gain * (victim_acc - floor_acc)
    stolen["gain_recovered"].update(linear_full=gain, linear_1pct=gain - 0.05)
    stolen["transfer_ratio"]["linear_full"] = stolen["linear_full"] / victim_acc
    result["queries"].update(budget=budget, sent=budget, cost=budget / 1000 * price_per_1k,
                             price_per_1k=price_per_1k, account_total=budget, charged=budget / 1000 * price_per_1k)
    if utility is None:
        del result["honest"]
        result["defenses"] = []
    else:
        result["honest"]["utility"]["linear_full"] = utility
    return cell_from(result, victim=victim, defense=defense, attack=attack, budget=budget, seed=seed,
                     ownership=ownership)


def audit_doc(cells: list[dict], *, name: str = "test audit", price_per_1k: float = 1.0,
              config: dict | None = None) -> dict:
    return {"schema_version": "sslaudit.audit/1", "name": name, "created": "2026-12-04T23:00:00+00:00",
            "price_per_1k": price_per_1k,
            "machine": {"device": "cpu", "cpu": "x86_64", "threads": 2, "precision": "float32",
                        "versions": {"sslaudit": "0.1.0", "torch": "2.13.0+cpu"}, "commit": "0123456789abcdef"},
            "config": config or {"audit": {"name": name}}, "cells": cells}


def bench_audit(name: str = "bench rows") -> dict:
    """Real rows wrapped into an audit: the MSE and StolenEncoder curves (no defence, 3 seeds, 4 budgets)
    and the defence rows of part 1 (noise, rounding, truncation, B4B)."""
    cells = []
    for row in bench_rows("curves_part1", 24) + bench_rows("defenses_part1"):
        cells.append(cell_from(row["report"], victim="simclr", defense=row.get("defense", "none"),
                               attack=row.get("attack") or row["spec"], budget=row["budget"], seed=row["seed"]))
    return audit_doc(cells, name=name)


def sweep(attack: str, gains: dict[int, list[float]], **fixed: object) -> list[dict]:
    """Cells of one attack: ``gains[budget]`` lists one gain per seed."""
    return [make_cell(attack=attack, budget=budget, seed=seed, gain=g, **fixed)
            for budget, values in gains.items() for seed, g in enumerate(values)]
