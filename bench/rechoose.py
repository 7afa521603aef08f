"""Re-choose, on the validation task, the two settings that an earlier check chose on test images.

- SplitMask's ``match`` (InfoNCE on the decoder's pooled outputs, the paper's, or the encoder's): the
  original check trained on 15,360 FMNIST train images for 6 epochs and probed on 3,000 *test* images.
- Self-training's student schedule (8 epochs in the original sanity run vs the shipped 20): the
  original run probed on 2,000 test images.

Both are now scored on ``validation_task()`` (probes train on FMNIST train[:50000], test on
train[50000:]; test data never selects anything), with the 1 %-label probe (5-fold CV, mean over 5
label draws) and kNN; the full-label probe is left out to keep the run short. Writes
``bench/results/rechoose.md``.

    python bench/rechoose.py
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from common import RESULTS, write_markdown

from sslaudit.api import SimulatedAPI
from sslaudit.attacks.self_training import STUDENT_TRAIN, SelfTraining
from sslaudit.data import load_dataset
from sslaudit.evaluate import few_label_scores
from sslaudit.features import embed
from sslaudit.probe import knn_accuracy
from sslaudit.report.table import format_table
from sslaudit.tasks import attack_pool, validation_task
from sslaudit.victims.splitmask import PRESETS
from sslaudit.victims.splitmask import SplitMask
from sslaudit.zoo import resolve_victim


def scores(encoder: torch.nn.Module, task) -> tuple[float, float, float]:
    train, test = embed(encoder, task.train.images), embed(encoder, task.test.images)
    few = torch.tensor(few_label_scores(train, test, task))
    return float(few.mean()), float(few.std()), knn_accuracy(train, task.train.labels, test, task.test.labels)


def row(name: str, encoder: torch.nn.Module, task, began: float) -> list[str]:
    mean, sd, knn = scores(encoder, task)
    print(name, mean, sd, knn, flush=True)
    return [name, f"{100 * mean:.1f} ± {100 * sd:.1f}", f"{100 * knn:.1f}", f"{time.perf_counter() - began:.0f}"]


def main() -> None:
    task = validation_task()
    rows = []
    data = load_dataset("fashion-mnist", "train").subset(slice(0, 15360), "fashion-mnist:train[:15360]")
    for match in ("decoder", "encoder"):
        began = time.perf_counter()
        config = replace(PRESETS["tiny"], match=match, train=replace(PRESETS["tiny"].train, epochs=6))
        victim = SplitMask.train(data, config, progress=False)
        rows.append(row(f"SplitMask match={match} (15,360 images, 6 epochs)", victim.encoder, task, began))
    victim = resolve_victim("simclr")
    pool = attack_pool("fashion-mnist")
    for epochs in (None, 8, STUDENT_TRAIN.epochs):
        began = time.perf_counter()
        api = SimulatedAPI(victim.encoder, budget=1000)
        attack = SelfTraining(student_train=replace(STUDENT_TRAIN, epochs=epochs)) if epochs else SelfTraining().base
        result = attack.run(api, pool, 1000, seed=0)
        label = f"self-training, student {epochs} epochs" if epochs else "MSE alone (the base)"
        rows.append(row(f"{label}, 1,000 queries", result.encoder, task, began))
    table = format_table(["setting", "lin 1 % (sd over draws)", "kNN", "seconds"], rows, markdown=True)
    notes = ("Validation task: probes train on FMNIST train[:50000] (1 % = 500 labels, 5 draws), test on "
             "train[50000:]; one seed. Self-training: the shipped SimCLR victim, 1,000 FMNIST-pool queries, "
             "the base MSE at its paper schedule.")
    write_markdown(RESULTS / "rechoose.md", "Settings re-chosen on the validation task", table, notes)
    print(table)


if __name__ == "__main__":
    main()
