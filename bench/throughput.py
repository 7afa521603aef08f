"""Benchmark: training throughput with bf16 autocast vs fp32 on this machine.

Times the real training steps (batched augmentation included): the tiny
SimCLR victim (two views per image) and the MSE extraction attack (one
augmented view per cached answer). Writes ``bench/results/throughput.md``.

    python bench/throughput.py --images 8192
"""
from __future__ import annotations

import argparse
import dataclasses

import torch
from common import RESULTS, write_markdown

from sslaudit.api import SimulatedAPI
from sslaudit.attacks.direct_extraction import DirectExtraction
from sslaudit.device import pick_device
from sslaudit.features import embed
from sslaudit.tasks import victim_training_data
from sslaudit.report.table import format_table
from sslaudit.victims.simclr import PRESETS, SimCLR
from sslaudit.train import History
from sslaudit.zoo import resolve_victim


def last_epoch_rate(history: History, images: int) -> float:
    return images / history.seconds[-1]


def simclr_rate(images: int, mixed: bool) -> float:
    data = victim_training_data().subset(slice(0, images))
    config = dataclasses.replace(PRESETS["tiny"], train=dataclasses.replace(PRESETS["tiny"].train, epochs=2))
    victim = SimCLR.train(data, config, progress=False, mixed_precision=mixed)
    return last_epoch_rate(History(**victim.card["history"]), images)


def steal_rate(images: int, mixed: bool) -> float:
    victim = resolve_victim("simclr")
    api = SimulatedAPI(victim.encoder)
    x = victim_training_data().subset(slice(0, images)).images.float().div(255)
    targets = embed(victim.encoder, x)
    attack = DirectExtraction(loss="mse")
    attack = dataclasses.replace(attack, train=dataclasses.replace(attack.train, epochs=2))
    result = attack.fit(api, x, targets, mixed_precision=mixed)
    return last_epoch_rate(result.history, images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8192)
    args = parser.parse_args()
    rows = []
    for name, fn in (("SimCLR tiny victim (2 views, batch 512)", simclr_rate),
                     ("MSE extraction (1 view, batch 32)", steal_rate)):
        fp32, bf16 = fn(args.images, False), fn(args.images, True)
        rows.append([name, f"{fp32:.0f}", f"{bf16:.0f}", f"{bf16 / fp32:.2f}x"])
        print(rows[-1], flush=True)
    note = (f"Images per second in the second of two epochs over {args.images} FMNIST images on "
            f"{pick_device()}; 'bf16' is torch.autocast(bfloat16), used by default where the CPU supports it.")
    table = format_table(["training step", "fp32 img/s", "bf16 img/s", "speed-up"], rows, markdown=True)
    write_markdown(RESULTS / "throughput.md", "Training throughput: bf16 autocast vs fp32", table, note)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
