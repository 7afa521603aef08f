"""Benchmark: queries → quality curves for every attack recipe against the tiny SimCLR victim.

Each (recipe, pool) buys the largest budget once and trains one stolen encoder
per budget on nested prefixes (``steal_curve``). Writes
``bench/results/curves.jsonl`` (one full report per row, resumable),
``bench/results/curves.md`` (the README tables: gain recovered per budget,
the winner per budget, every metric) and ``bench/results/curves.png``.

    python bench/curves.py --attacks mse stolenencoder rda --pools fashion-mnist digits
    python bench/curves.py --render-only
    python bench/curves.py --validation --attacks "mse:standardize=true" --budgets 5000   # choosing settings

``--validation`` scores on FMNIST train[50000:] instead of the test split and writes
``curves_validation.*``: settings are chosen there, never on the test split.
"""
from __future__ import annotations

import argparse
import time

from common import RESULTS, append_row, load_rows, write_markdown

from sslaudit import registry
from sslaudit.cli import parse_component
from sslaudit.tasks import attack_pool, downstream_task, validation_task
from sslaudit.audit import steal_curve
from sslaudit.report.table import format_table
from sslaudit.zoo import resolve_victim

JSONL, MARKDOWN, FIGURE = RESULTS / "curves.jsonl", RESULTS / "curves.md", RESULTS / "curves.png"
VALIDATION = (RESULTS / "curves_validation.jsonl", RESULTS / "curves_validation.md", RESULTS / "curves_validation.png")
BUDGETS = [500, 1000, 2000, 5000]
ZERO_QUERY = {"ssl-small"}  # trains on the pool without the API: one row, drawn as a horizontal line


def run(attacks: list[str], pools: list[str], budgets: list[int], seed: int, victim_spec: str) -> None:
    victim = resolve_victim(victim_spec)
    task = validation_task() if JSONL == VALIDATION[0] else downstream_task()
    done = {(r["spec"], r["pool"], r["budget"], r["seed"]) for r in load_rows(JSONL)}
    for spec in attacks:
        name, options = parse_component(spec)
        wanted = [0] if name in ZERO_QUERY else budgets
        for pool_name in pools:
            todo = [b for b in wanted if (spec, pool_name, b, seed) not in done]
            if not todo:
                continue
            pool = attack_pool(pool_name, size=victim.encoder.spec.size)
            attack = registry.get_attack(name)(**options)
            began = time.perf_counter()
            reports = steal_curve(victim, attack, pool, [max(b, 1) for b in todo], task, seed=seed)
            for budget, report in zip(todo, reports):
                append_row(JSONL, {"spec": spec, "pool": pool_name, "budget": budget, "seed": seed,
                                   "victim": victim.name, "report": report})
                print(f"{spec} {pool_name} {budget}: gain {report['stolen']['gain_recovered']}", flush=True)
            print(f"{spec} {pool_name}: {time.perf_counter() - began:.0f}s", flush=True)
    render()


def _gain(row: dict) -> str:
    g = row["report"]["stolen"]["gain_recovered"]
    return f"{g['linear_1pct']:.2f} / {g['linear_full']:.2f}"


def render() -> None:
    rows = load_rows(JSONL)
    if not rows:
        return
    by_key = {(r["spec"], r["pool"], r["budget"]): r for r in rows}
    specs = list(dict.fromkeys(r["spec"] for r in rows))
    pools = list(dict.fromkeys(r["pool"] for r in rows))
    budgets = sorted({r["budget"] for r in rows if r["budget"] > 0})
    parts = []
    for pool in pools:
        table = [[spec] + [_gain(by_key[(spec, pool, b)]) if (spec, pool, b) in by_key else
                           (_gain(by_key[(spec, pool, 0)]) + " *" if (spec, pool, 0) in by_key else "")
                           for b in budgets] for spec in specs]
        parts.append(f"Gain recovered (1 % labels / full labels), pool {pool}:\n\n"
                     + format_table(["attack"] + [f"{b:,} queries" for b in budgets], table, markdown=True))
        winners = []
        for b in budgets:
            cands = [(by_key[(s, pool, b)]["report"]["stolen"]["gain_recovered"], s) for s in specs
                     if (s, pool, b) in by_key]
            if cands:
                best_1 = max(cands, key=lambda c: c[0]["linear_1pct"])
                best_f = max(cands, key=lambda c: c[0]["linear_full"])
                winners.append([f"{b:,}", f"{best_1[1]} ({best_1[0]['linear_1pct']:.2f})",
                                f"{best_f[1]} ({best_f[0]['linear_full']:.2f})"])
        parts.append(f"Best recipe per budget, pool {pool}:\n\n"
                     + format_table(["queries", "best at 1 % labels", "best at full labels"], winners, markdown=True))
    parts.append("Every row:\n\n" + format_table(*_detail(rows), markdown=True))
    v, fl = rows[0]["report"]["victim"], rows[0]["report"]["floor"]
    notes = (f"Victim {v['name']}: lin 1% {100 * v['linear_1pct']:.1f}, lin full {100 * v['linear_full']:.1f}, "
             f"kNN {100 * v['knn']:.1f}. Random-init floor ({fl['arch']}): lin 1% {100 * fl['linear_1pct']:.1f}, "
             f"lin full {100 * fl['linear_full']:.1f}, kNN {100 * fl['knn']:.1f}. Gain recovered = (stolen − floor) / "
             "(victim − floor); transfer = stolen / victim. Probes train on FMNIST train labels and test on FMNIST "
             "test[5000:], never queried. Each (attack, pool) bought its largest budget once and trained one "
             "encoder per budget on nested prefixes (sybil buys per budget). * = zero-query baseline (SSL-Small "
             "trains on the pool itself), the same value at every budget. 'train s' is the fit time of that row, "
             f"with {sorted({r['report']['run']['threads'] for r in rows})} torch thread(s); the two pools ran "
             "as two processes side by side on the two cores, so times are about what one core gives.")
    write_markdown(MARKDOWN, "Queries → quality curves against the tiny SimCLR victim", "\n\n".join(parts), notes)
    plot(rows, pools, specs)


def _detail(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["attack", "pool", "queries", "cost", "lin 1%", "lin full", "kNN", "cos", "CKA", "transfer 1%/full",
              "gain 1%/full", "train s"]
    out = []
    for r in rows:
        s, q = r["report"]["stolen"], r["report"]["queries"]
        t, f = s["transfer_ratio"], s["fidelity"]
        cos = "—" if f["cosine"] is None else f"{f['cosine']:.2f}"
        secs = "" if s["train_seconds"] is None else f"{s['train_seconds']:.0f}"
        out.append([r["spec"], r["pool"], str(q["sent"]), f"${q['cost']:.2f}", f"{100 * s['linear_1pct']:.1f}",
                    f"{100 * s['linear_full']:.1f}", f"{100 * s['knn']:.1f}", cos, f"{f['cka']:.2f}",
                    f"{t['linear_1pct']:.2f} / {t['linear_full']:.2f}", _gain(r), secs])
    return header, out


def plot(rows: list[dict], pools: list[str], specs: list[str]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'); skipping the figure")
        return
    metrics = [("linear_1pct", "1 % labels"), ("linear_full", "full labels")]
    fig, axes = plt.subplots(len(pools), 2, figsize=(11, 4 * len(pools)), squeeze=False)
    for i, pool in enumerate(pools):
        for j, (metric, label) in enumerate(metrics):
            ax = axes[i][j]
            for spec in specs:
                pts = sorted((r["budget"], r["report"]["stolen"]["gain_recovered"][metric]) for r in rows
                             if r["spec"] == spec and r["pool"] == pool)
                if not pts:
                    continue
                if pts[0][0] == 0:
                    ax.axhline(pts[0][1], linestyle="--", color="black", label=f"{spec} (0 queries)")
                else:
                    ax.plot(*zip(*pts), marker="o", label=spec)
            ax.set_xscale("log")
            ticks = sorted({r["budget"] for r in rows if r["budget"] > 0})
            ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel("queries")
            ax.set_ylabel("gain recovered")
            ax.set_title(f"{pool}, linear probe with {label}")
            ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attacks", nargs="+", default=["mse"], help="name or name:key=value,...")
    parser.add_argument("--pools", nargs="+", default=["fashion-mnist", "digits"])
    parser.add_argument("--budgets", nargs="+", type=int, default=BUDGETS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--victim", default="simclr")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--validation", action="store_true", help="score on FMNIST train[50000:] (for choosing settings)")
    args = parser.parse_args()
    if args.validation:
        global JSONL, MARKDOWN, FIGURE
        JSONL, MARKDOWN, FIGURE = VALIDATION
    if args.render_only:
        render()
        return
    run(args.attacks, args.pools, args.budgets, args.seed, args.victim)


if __name__ == "__main__":
    main()
