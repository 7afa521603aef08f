"""Benchmark: queries → quality curves against the tiny SimCLR victim, 3 seeds, 95 % intervals.

Each (recipe, pool, seed) buys the largest budget once and trains one stolen
encoder per budget on nested prefixes (``steal_curve``): the seed sets the
attack's initialisation, augmentation and the pool order; the victim is fixed.
``--equal-steps`` trains every smaller budget for as many optimisation steps as
the recipe's epochs give at 5,000 queries, so a curve shows the budget rather
than the schedule. Writes ``bench/results/curves.jsonl`` (one report per row,
resumable), ``curves.md`` (the tables) and ``curves.png`` (interval bands).

    python bench/curves.py --attacks mse stolenencoder --seeds 0 1 2
    python bench/curves.py --attacks mse infonce --budgets 500 1000 2000 --equal-steps
    python bench/curves.py --render-only
    python bench/curves.py --validation --attacks "mse:standardize=true" --budgets 5000   # choosing settings
"""
from __future__ import annotations

import argparse
import time

from common import RESULTS, append_row, load_rows, write_markdown
from curves_render import render

from sslaudit import registry
from sslaudit.audit import steal_curve
from sslaudit.registry import split_component
from sslaudit.tasks import attack_pool, downstream_task, validation_task
from sslaudit.zoo import resolve_victim

JSONL, MARKDOWN, FIGURE = RESULTS / "curves.jsonl", RESULTS / "curves.md", RESULTS / "curves.png"
VALIDATION = (RESULTS / "curves_validation.jsonl", RESULTS / "curves_validation.md", RESULTS / "curves_validation.png")
BUDGETS = [500, 1000, 2000, 5000]
STEPS_OF = 5000  # --equal-steps: every budget trains for the steps the recipe's epochs give at this budget
ZERO_QUERY = {"ssl-small"}  # trains on the pool without the API: one row, drawn as a horizontal line


def run(attacks: list[str], pools: list[str], budgets: list[int], seeds: list[int], victim_spec: str,
        equal_steps: bool, validation: bool) -> None:
    victim = resolve_victim(victim_spec)
    task = validation_task() if validation else downstream_task()
    schedule = "steps" if equal_steps else "epochs"
    done = {(r["spec"], r["pool"], r["budget"], r["seed"], r.get("schedule", "epochs")) for r in load_rows(JSONL)}
    for spec in attacks:
        name = split_component(spec)[0]
        wanted = [0] if name in ZERO_QUERY else budgets
        for pool_name in pools:
            pool = attack_pool(pool_name, size=victim.encoder.spec.size)
            for seed in seeds:
                todo = [b for b in wanted if (spec, pool_name, b, seed, schedule) not in done]
                if not todo:
                    continue
                began = time.perf_counter()
                attack = registry.build("attack", spec)
                if equal_steps:  # one purchase per budget: the same nested prefix, a longer schedule
                    reports = [steal_curve(victim, attack.with_epochs(attack.equal_step_epochs(b, STEPS_OF, seed)),
                                           pool, [b], task, seed=seed)[0] for b in todo]
                else:
                    reports = steal_curve(victim, attack, pool, [max(b, 1) for b in todo], task, seed=seed)
                for budget, report in zip(todo, reports):
                    append_row(JSONL, {"spec": spec, "pool": pool_name, "budget": budget, "seed": seed,
                                       "schedule": schedule, "victim": victim.name, "report": report.to_dict()})
                    print(f"{spec} {pool_name} {budget} seed {seed} {schedule}: gain "
                          f"{report.stolen.gain_recovered}", flush=True)
                print(f"{spec} {pool_name} seed {seed}: {time.perf_counter() - began:.0f}s", flush=True)
    render(load_rows(JSONL), MARKDOWN, FIGURE, write_markdown)


def main() -> None:
    global JSONL, MARKDOWN, FIGURE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attacks", nargs="+", default=["mse"], help="name or name:key=value,...")
    parser.add_argument("--pools", nargs="+", default=["fashion-mnist"])
    parser.add_argument("--budgets", nargs="+", type=int, default=BUDGETS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--victim", default="simclr")
    parser.add_argument("--equal-steps", action="store_true", help=f"every budget trains {STEPS_OF} queries' steps")
    parser.add_argument("--jsonl", type=str, default=None,
                        help="append rows to bench/results/NAME instead; name parallel runs curves_partN.jsonl")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--validation", action="store_true", help="score on FMNIST train[50000:] (for choosing settings)")
    args = parser.parse_args()
    if args.validation:
        JSONL, MARKDOWN, FIGURE = VALIDATION
    if args.jsonl:
        JSONL = RESULTS / args.jsonl
    if args.render_only:
        rows = [r for path in [JSONL, *sorted(RESULTS.glob(JSONL.stem + "_part*.jsonl"))] for r in load_rows(path)]
        render(rows, MARKDOWN, FIGURE, write_markdown)
        return
    run(args.attacks, args.pools, args.budgets, args.seeds, args.victim, args.equal_steps, args.validation)


if __name__ == "__main__":
    main()
