"""Benchmark: `./dev.sh demo` from a fresh clone, installation included, as a new user runs it.

Each repeat clones the committed HEAD into a temporary folder, runs ``./dev.sh demo`` there with an empty
score cache (so the stolen encoder is evaluated, as on a fresh machine) and records the wall time, split
into set-up (everything before the audit) and the audit (``run.wall_seconds`` of ``runs/demo.json``,
of which the stolen encoder's training). Run it alone: every other process on the CPU shows up here.
Fashion-MNIST's Debian package must already be installed (apt adds about half a minute once).

    python bench/demo_wall.py --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import RESULTS, append_row, load_rows, write_markdown

from sslaudit.report.table import format_table
from sslaudit.stats import mean_interval

JSONL = RESULTS / "demo_wall.jsonl"
REPO = Path(__file__).resolve().parent.parent


def one_run() -> dict:
    """Clone HEAD, time ``./dev.sh demo`` in the clone, and read its result file."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="sslaudit-demo-") as tmp:
        clone = Path(tmp) / "sslaudit"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        began = time.perf_counter()
        subprocess.run(["./dev.sh", "demo"], cwd=clone, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env={**os.environ, "SSLAUDIT_CACHE": f"{tmp}/cache"})
        total = time.perf_counter() - began
        result = json.loads((clone / "runs" / "demo.json").read_text())
    audit = result["run"]["wall_seconds"]
    return {"commit": commit[:7], "total_s": round(total, 1), "setup_s": round(total - audit, 1),
            "audit_s": audit, "train_s": result["stolen"].get("train_seconds"),
            "gain_1pct": result["stolen"]["gain_recovered"]["linear_1pct"],
            "gain_full": result["stolen"]["gain_recovered"]["linear_full"], "finished": time.strftime("%F %T")}


def render() -> None:
    rows = load_rows(JSONL)
    latest = rows[-1]["commit"] if rows else ""
    rows = [r for r in rows if r["commit"] == latest]

    def cell(key: str) -> str:
        values = [r[key] for r in rows if r.get(key) is not None]
        if not values:
            return ""
        interval = mean_interval(values)
        return f"{interval.mean:.0f} ± {interval.half_width:.0f}" if len(values) > 1 else f"{values[0]:.0f}"

    table = [[f"{r['total_s']:.0f}", f"{r['setup_s']:.0f}", f"{r['audit_s']:.0f}",
              f"{r['train_s']:.0f}" if r.get("train_s") else "", f"{r['gain_1pct']:.2f} / {r['gain_full']:.2f}"]
             for r in rows]
    table.append([cell("total_s"), cell("setup_s"), cell("audit_s"), cell("train_s"), "mean ± 95 % interval"])
    header = ["total s", "set-up s", "audit s", "of which training s", "gain 1% / full"]
    note = (f"`./dev.sh demo` on a fresh clone of commit {latest}, one row per clone, an empty score cache; "
            "Fashion-MNIST's Debian package already installed, no pip cache, wheels from the machine's local "
            "package index (downloads not timed). Set-up: venv, torch and the "
            "dependencies, the package; audit: the `sslaudit steal` run as `runs/demo.json` timed it.")
    write_markdown(RESULTS / "demo_wall.md", "The demo from a fresh clone", format_table(header, table,
                   markdown=True), note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for _ in range(args.repeats):
        row = one_run()
        append_row(JSONL, row)
        print(row, flush=True)
    render()


if __name__ == "__main__":
    main()
