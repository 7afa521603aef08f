"""Benchmark: victims on Fashion-MNIST next to raw pixels and a random-init encoder.

Trains each requested victim with its preset (or reuses the shipped/cached one,
whose card keeps the training time; scores come from the score cache) and writes
``bench/results/victims.jsonl`` and ``bench/results/victims.md``.

    python bench/victims.py --methods simclr --preset tiny
"""
from __future__ import annotations

import argparse

import torch
from common import RESULTS, append_row, load_rows, raw_pixel_scores, write_markdown

from sslaudit.evaluate import evaluate_encoder
from sslaudit.models import InputSpec, build_encoder, count_parameters
from sslaudit.tasks import DownstreamTask, downstream_task
from sslaudit.audit import victim_scores
from sslaudit.report.table import format_table
from sslaudit.zoo import find_victim, train_victim

JSONL, MARKDOWN = RESULTS / "victims.jsonl", RESULTS / "victims.md"
RANDOM_INIT_ARCHS = ("convnet", "vit-tiny", "swin-tiny")  # the tiny victims' backbones


def baselines(task: DownstreamTask) -> list[dict]:
    torch.manual_seed(0)
    _, channels, size, _ = task.train.images.shape
    rows = [{"name": "raw pixels", "arch": "—", "parameters": 0, "train_seconds": 0, **raw_pixel_scores(task)}]
    for arch in RANDOM_INIT_ARCHS:
        torch.manual_seed(0)
        encoder = build_encoder(arch, InputSpec(channels=channels, size=size))
        rows.append({"name": "random init", "arch": arch, "parameters": count_parameters(encoder),
                     "train_seconds": 0, **evaluate_encoder(encoder, task)})
    return rows


def run(methods: list[str], preset: str, note: str = "") -> None:
    task = downstream_task()
    rows = load_rows(JSONL)
    done = {(r["name"], r.get("preset"), r["task"]) for r in rows}
    if ("raw pixels", None, task.key) not in done:
        for row in baselines(task):
            append_row(JSONL, {**row, "preset": None, "task": task.key})
    for method in methods:
        if (method, preset, task.key) in done:
            continue
        victim = find_victim(method, preset) or train_victim(method, preset)
        card = victim.card
        append_row(JSONL, {"name": method, "preset": preset, "task": task.key, "arch": card["arch"],
                           "parameters": card["parameters"], "train_seconds": card["train_seconds"],
                           "epochs": card["epochs"], "device": card.get("device"),
                           **victim_scores(victim, task)})
    render(note)


def one_percent(row: dict) -> str:
    spread = row.get("linear_1pct_spread")
    return f"{100 * row['linear_1pct']:.1f}" + (f" ± {100 * spread:.1f}" if spread is not None else "")


def render(extra_note: str = "") -> None:
    rows = load_rows(JSONL)
    latest = rows[-1]["task"] if rows else ""  # older rows were scored by an older probe: kept, not shown
    rows = [[r["name"], r.get("preset") or "", r["arch"], f"{r['parameters']:,}", str(r.get("epochs", "")),
             f"{r['train_seconds'] / 60:.1f}" if r["train_seconds"] else "", one_percent(r),
             f"{100 * r['linear_full']:.1f}", f"{100 * r['knn']:.1f}"] for r in rows if r["task"] == latest]
    header = ["encoder", "preset", "arch", "params", "epochs", "train min", "lin 1%", "lin full", "kNN"]
    note = ("FMNIST probes: train on FMNIST train labels (600 for 1 %: mean ± standard deviation over 5 draws "
            f"of the 600), test on FMNIST test[5000:]; task `{latest}`. Training time is what the victim's "
            "card recorded on the machine that trained it.")
    write_markdown(MARKDOWN, "Victims on Fashion-MNIST", format_table(header, rows, markdown=True),
                   f"{note} {extra_note}".strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["simclr"])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--note", default="", help="a caveat to print under the table (e.g. a contended run)")
    args = parser.parse_args()
    run(args.methods, args.preset, args.note)


if __name__ == "__main__":
    main()
