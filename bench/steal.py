"""Benchmark: stealing the shipped tiny SimCLR victim, one row per (attack, pool, budget, seed).

Writes ``bench/results/steal.jsonl`` (one full report per row, resumable) and
``bench/results/steal.md`` (the README table).

    python bench/steal.py --attacks mse infonce --pools fashion-mnist digits --budgets 5000
    python bench/steal.py --attacks "infonce:temperature=0.5" --budgets 500 5000
"""
from __future__ import annotations

import argparse
import time

from common import RESULTS, append_row, load_rows, write_markdown

from sslaudit import registry
from sslaudit.audit import steal
from sslaudit.report.markdown import results_markdown
from sslaudit.result import StealResult
from sslaudit.tasks import attack_pool, downstream_task
from sslaudit.zoo import resolve_victim

JSONL, MARKDOWN = RESULTS / "steal.jsonl", RESULTS / "steal.md"
CONTENTION = ("the rows of 2026-11-23 ran while other jobs shared the two cores, so their times are upper bounds "
              "(alone, the MSE attack trained in about 106 s; 100 epochs at batch 256 took about 134 s).")


def run(attacks: list[str], pools: list[str], budgets: list[int], seeds: list[int], victim_spec: str) -> None:
    victim = resolve_victim(victim_spec)
    task = downstream_task()
    done = {(r["spec"], r["pool"], r["budget"], r["seed"], r["victim"]) for r in load_rows(JSONL)}
    for spec in attacks:
        for pool_name in pools:
            pool = attack_pool(pool_name, size=victim.encoder.spec.size)
            for budget in budgets:
                for seed in seeds:
                    if (spec, pool_name, budget, seed, victim.name) in done:
                        continue
                    attack = registry.build("attack", spec)
                    began = time.perf_counter()
                    result = steal(victim, attack, pool, budget, task, seed=seed)
                    print(f"{spec} {pool_name} {budget} seed {seed}: gain {result.stolen.gain_recovered} in "
                          f"{time.perf_counter() - began:.0f}s", flush=True)
                    append_row(JSONL, {"spec": spec, "pool": pool_name, "budget": budget, "seed": seed,
                                       "victim": victim.name, "report": result.to_dict()})
    render()


def render() -> None:
    rows = load_rows(JSONL)
    if not rows:
        return
    results = [StealResult.from_dict(r["report"]) for r in rows]
    labels = [f"{r['spec']} ({r['pool']}, seed {r['seed']})" for r in rows]
    notes = ("The victim and random-init rows are the first run's. Probes train on FMNIST train labels and "
             "test on FMNIST test[5000:], never queried. 'seconds' is the attack's wall time (querying + "
             f"training) with the torch threads in the run line; {CONTENTION}")
    write_markdown(MARKDOWN, "Stealing the tiny SimCLR victim", results_markdown(results, labels), notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attacks", nargs="+", default=["mse", "infonce"], help="name or name:key=value,...")
    parser.add_argument("--pools", nargs="+", default=["fashion-mnist", "digits"])
    parser.add_argument("--budgets", nargs="+", type=int, default=[5000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--victim", default="simclr")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    if args.render_only:
        render()
        return
    run(args.attacks, args.pools, args.budgets, args.seeds, args.victim)


if __name__ == "__main__":
    main()
