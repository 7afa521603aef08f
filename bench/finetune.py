"""Benchmark: full fine-tuning accuracy of a victim next to the same architecture from random init.

Masked-image-modelling encoders such as SplitMask are judged by fine-tuning,
since their frozen features probe poorly. Each row fine-tunes the encoder plus a
linear head end to end on all FMNIST train labels (``sslaudit/finetune.py``) and
reports accuracy on FMNIST test[5000:]. Writes ``bench/results/finetune.{jsonl,md}``.

    python bench/finetune.py --methods splitmask --epochs 5
"""
from __future__ import annotations

import argparse
import time

import torch
from common import RESULTS, append_row, load_rows, write_markdown

from sslaudit.finetune import finetune_accuracy
from sslaudit.models import InputSpec, build_encoder
from sslaudit.tasks import downstream_task
from sslaudit.report.table import format_table
from sslaudit.zoo import find_victim, train_victim

JSONL, MARKDOWN = RESULTS / "finetune.jsonl", RESULTS / "finetune.md"


def run(methods: list[str], preset: str, epochs: int, note: str = "") -> None:
    task = downstream_task()
    done = {(r["name"], r["arch"], r["epochs"], r["task"]) for r in load_rows(JSONL)}
    for method in methods:
        victim = find_victim(method, preset) or train_victim(method, preset)
        arch = victim.card["arch"]
        torch.manual_seed(0)
        random_init = build_encoder(arch, InputSpec(channels=1, size=28))
        for name, encoder in ((f"{method} ({preset})", victim.encoder), ("random init", random_init)):
            if (name, arch, epochs, task.key) in done:
                continue
            began = time.perf_counter()
            accuracy = finetune_accuracy(encoder, task, epochs=epochs, progress=True)
            append_row(JSONL, {"name": name, "arch": arch, "epochs": epochs, "task": task.key,
                               "finetune_full": accuracy, "seconds": round(time.perf_counter() - began, 1)})
            done.add((name, arch, epochs, task.key))
    render(note)


def render(extra_note: str = "") -> None:
    rows = [[r["name"], r["arch"], str(r["epochs"]), f"{100 * r['finetune_full']:.1f}",
             f"{r['seconds'] / 60:.1f}"] for r in load_rows(JSONL)]
    header = ["encoder", "arch", "epochs", "fine-tune acc", "minutes"]
    note = ("Fine-tuning: encoder + linear head (on BatchNorm-standardised features) trained end to end on all "
            "60,000 FMNIST train labels with AdamW lr 1e-3, wd 0.05, batch 256, warm-up + cosine, random crops "
            "(0.5-1); accuracy on FMNIST test[5000:].")
    write_markdown(MARKDOWN, "Fine-tuning on Fashion-MNIST", format_table(header, rows, markdown=True),
                   f"{note} {extra_note}".strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["splitmask"])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--note", default="", help="a caveat to print under the table (e.g. a contended run)")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    if args.render_only:
        render(args.note)
        return
    run(args.methods, args.preset, args.epochs, args.note)


if __name__ == "__main__":
    main()
