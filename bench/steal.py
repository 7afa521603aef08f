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
from sslaudit.cli import parse_component
from sslaudit.tasks import attack_pool, downstream_task
from sslaudit.audit import steal
from sslaudit.report.table import format_table
from sslaudit.zoo import resolve_victim

JSONL, MARKDOWN = RESULTS / "steal.jsonl", RESULTS / "steal.md"
CONTENTION = ("the rows of 2026-11-23 ran while other jobs shared the two cores, so their times are upper bounds "
              "(alone, the MSE attack trained in about 106 s; 100 epochs at batch 256 took about 134 s).")


def run(attacks: list[str], pools: list[str], budgets: list[int], seeds: list[int], victim_spec: str) -> None:
    victim = resolve_victim(victim_spec)
    task = downstream_task()
    done = {(r["spec"], r["pool"], r["budget"], r["seed"], r["victim"]) for r in load_rows(JSONL)}
    for spec in attacks:
        name, options = parse_component(spec)
        for pool_name in pools:
            pool = attack_pool(pool_name, size=victim.encoder.spec.size)
            for budget in budgets:
                for seed in seeds:
                    if (spec, pool_name, budget, seed, victim.name) in done:
                        continue
                    attack = registry.get_attack(name)(**options)
                    began = time.perf_counter()
                    report = steal(victim, attack, pool, budget, task, seed=seed)
                    print(f"{spec} {pool_name} {budget} seed {seed}: gain "
                          f"{report['stolen']['gain_recovered']} in {time.perf_counter() - began:.0f}s", flush=True)
                    append_row(JSONL, {"spec": spec, "pool": pool_name, "budget": budget, "seed": seed,
                                       "victim": victim.name, "report": report})
    render()


def render() -> None:
    header = ["attack", "pool", "queries", "seed", "lin 1%", "lin full", "kNN", "cos", "CKA", "gain 1%", "gain full",
              "transfer 1%", "transfer full", "train s", "threads"]
    rows = []
    for r in load_rows(JSONL):
        s, rep = r["report"]["stolen"], r["report"]
        g, t, f = s["gain_recovered"], s["transfer_ratio"], s["fidelity"]
        cos = "—" if f["cosine"] is None else f"{f['cosine']:.2f}"
        rows.append([r["spec"], r["pool"], str(rep["queries"]["sent"]), str(r["seed"]),
                     f"{100 * s['linear_1pct']:.1f}", f"{100 * s['linear_full']:.1f}", f"{100 * s['knn']:.1f}",
                     cos, f"{f['cka']:.2f}", f"{g['linear_1pct']:.2f}", f"{g['linear_full']:.2f}",
                     f"{t['linear_1pct']:.2f}", f"{t['linear_full']:.2f}", f"{s['train_seconds']:.0f}",
                     str(rep["run"]["threads"])])
    if not rows:
        return
    first = load_rows(JSONL)[0]["report"]
    v, fl = first["victim"], first["floor"]
    notes = (f"Victim {v['name']}: lin 1% {100 * v['linear_1pct']:.1f}, lin full {100 * v['linear_full']:.1f}, "
             f"kNN {100 * v['knn']:.1f}. Random-init floor ({fl['arch']}): lin 1% {100 * fl['linear_1pct']:.1f}, "
             f"lin full {100 * fl['linear_full']:.1f}, kNN {100 * fl['knn']:.1f}. Probes train on FMNIST train "
             f"labels and test on FMNIST test[5000:], never queried. 'train s' is the attack's wall time "
             f"(querying + training) with the listed torch threads; {CONTENTION}")
    write_markdown(MARKDOWN, "Stealing the tiny SimCLR victim", format_table(header, rows, markdown=True), notes)


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
