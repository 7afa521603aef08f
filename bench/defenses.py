"""Benchmark: every defence scored in one run: the honest user's utility and the thief's gain recovered.

For each (defence, attack, seed) the tiny SimCLR victim is served behind the defence (a
``SimulatedAPI`` keyed by ``DeploymentSecret.fixed("bench-defenses-<seed>")``), the attack buys 5,000
queries of the FMNIST pool and is scored with the fixed probes, and, once per (defence, seed), an
honest account solves the FMNIST task through the same defended API (``honest=True``). The seed sets
the attack's initialisation, augmentation and pool order and the deployment secret; the victim is
fixed. Rows are appended to ``bench/results/defenses.jsonl`` (resumable: finished rows are skipped);
the undefended rows are read from the curves benchmark (same victim, task, budget and seeds).
``bench/defenses_render.py`` writes the trade-off table and scatter plot.

A defence is one registry spec or several joined with ``+`` (applied in that order):

    python bench/defenses.py --defenses "noise:sigma=0.5" "b4b" --attacks stolenencoder --seeds 0 1 2
    python bench/defenses.py --grid strongest        # the README's grid (long: ~7 min per row on one core)
    python bench/defenses.py --render-only
"""
from __future__ import annotations

import argparse
import time

from common import RESULTS, append_row, load_rows, write_markdown
from defenses_render import render

from sslaudit import registry
from sslaudit.audit import steal
from sslaudit.secret import DeploymentSecret
from sslaudit.tasks import attack_pool, downstream_task
from sslaudit.zoo import resolve_victim

JSONL = RESULTS / "defenses.jsonl"
BUDGET = 5000
# (defence, attacks): each defence with the strongest plain attack and the adaptive attack aimed at it.
GRIDS: dict[str, list[tuple[str, list[str]]]] = {
    "strongest": [
        ("noise:sigma=0.5", ["stolenencoder", "average:copies=4", "mse", "simreg"]),
        ("noise:sigma=2.0", ["stolenencoder", "average:copies=4"]),
        ("b4b", ["stolenencoder", "coverage-sybil"]),
        ("b4b:beta=40", ["stolenencoder", "coverage-sybil"]),
        ("round:decimals=1", ["stolenencoder", "besa"]),
        ("round:decimals=0", ["stolenencoder"]),
        ("topk:fraction=0.1", ["stolenencoder", "besa"]),
        ("topk:fraction=0.3", ["stolenencoder"]),
        ("transform:kind=pad_shuffle", ["stolenencoder", "pad-drop"]),
        ("transform:kind=affine_pad_shuffle", ["stolenencoder", "pad-drop", "sybil"]),
        ("truncate:fraction=0.25", ["stolenencoder"]),
        ("truncate:fraction=0.5", ["stolenencoder"]),
        ("knn-detector:action=poison", ["stolenencoder"]),
    ],
}


def build_defenses(spec: str) -> list:
    """``"a:k=v+b"`` → the defences ``a(k=v)`` then ``b``; ``"none"`` → no defence."""
    return [registry.build("defense", part) for part in spec.split("+") if part and part != "none"]


def run(pairs: list[tuple[str, list[str]]], seeds: list[int], victim_spec: str, pool_name: str) -> None:
    victim = resolve_victim(victim_spec)
    task = downstream_task()
    pool = attack_pool(pool_name, size=victim.encoder.spec.size)
    rows = [r for path in {JSONL, *RESULTS.glob("defenses*.jsonl")} for r in load_rows(path)]
    done = {(r["defense"], r["attack"], r["seed"]) for r in rows}
    honest_done = {(r["defense"], r["seed"]) for r in rows if r["report"].get("honest")}
    for seed in seeds:
        for defense, attacks in pairs:
            for attack_spec in attacks:
                if (defense, attack_spec, seed) in done:
                    continue
                began = time.perf_counter()
                honest = (defense, seed) not in honest_done
                report = steal(victim, registry.build("attack", attack_spec), pool, BUDGET, task,
                               defenses=build_defenses(defense), seed=seed, honest=honest,
                               secret=DeploymentSecret.fixed(f"bench-defenses-{seed}"))
                append_row(JSONL, {"defense": defense, "attack": attack_spec, "seed": seed, "pool": pool_name,
                                   "budget": BUDGET, "victim": victim.name, "report": report.to_dict()})
                honest_done.add((defense, seed))
                print(f"{defense} | {attack_spec} | seed {seed}: gain {report.stolen.gain_recovered}"
                      f"{'' if report.honest is None else f', honest {report.honest.scores}'}"
                      f" ({time.perf_counter() - began:.0f}s)", flush=True)
    render_all()


def render_all() -> None:
    rows = [r for path in [JSONL, *sorted(RESULTS.glob("defenses_part*.jsonl"))] for r in load_rows(path)]
    undefended = [r for path in sorted(RESULTS.glob("curves_part*.jsonl")) for r in load_rows(path)
                  if r["budget"] == BUDGET and r.get("schedule", "epochs") == "epochs" and r["pool"] == "fashion-mnist"]
    render(rows, undefended, RESULTS / "defenses.md", RESULTS / "defenses.png", write_markdown)


def main() -> None:
    global JSONL
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--defenses", nargs="+", default=None, help="spec or spec+spec (chained)")
    parser.add_argument("--attacks", nargs="+", default=["stolenencoder"])
    parser.add_argument("--grid", choices=sorted(GRIDS), default=None, help="a named (defence, attacks) grid")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--victim", default="simclr")
    parser.add_argument("--pool", default="fashion-mnist")
    parser.add_argument("--jsonl", default=None, help="append to bench/results/NAME (parallel runs: defenses_partN.jsonl)")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    if args.jsonl:
        JSONL = RESULTS / args.jsonl
    if args.render_only:
        render_all()
        return
    pairs = GRIDS[args.grid] if args.grid else [(d, args.attacks) for d in (args.defenses or ["none"])]
    run(pairs, args.seeds, args.victim, args.pool)


if __name__ == "__main__":
    main()
