"""Write the probe scores shipped with the package: the shipped victims and the random-init floors.

A fresh install then evaluates only the encoder it stole (``sslaudit.score_cache`` reads
``sslaudit/weights/scores/`` when the user's cache has none). The floor is the default stolen
architecture (``convnet``) at the input spec of the shipped victim, for seeds 0-2 (an audit's seed
sets the floor's initialisation). Scores are keyed by the weights' content hash, the task (with the
probe version) and float32 evaluation, so a shipped file is read only for exactly these weights.

    python bench/ship_scores.py             # the victims shipped in sslaudit/weights, floors seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from sslaudit.audit import floor_scores
from sslaudit.models import build_encoder
from sslaudit.score_cache import SHIPPED, cached_scores, score_key, score_path, write_atomically
from sslaudit.tasks import DownstreamTask, downstream_task
from sslaudit.victim import Victim

WEIGHTS = SHIPPED.parent


def ship(encoder: torch.nn.Module, task: DownstreamTask, label: str) -> dict[str, float]:
    """Evaluate (or read from the user's cache) and write the shipped file of ``encoder``; its scores."""
    began = time.perf_counter()
    scores = cached_scores(encoder, task)
    key = score_key(encoder, task)
    write_atomically(score_path(key, SHIPPED),
                     json.dumps({"key": key, "scores": scores, "label": label}, indent=1, sort_keys=True))
    print(f"{label}: {scores} ({time.perf_counter() - began:.0f} s)", flush=True)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--arch", default="convnet", help="the floor's architecture (the default stolen one)")
    args = parser.parse_args()
    task = downstream_task()
    for card in sorted(WEIGHTS.glob("*.json")):
        victim = Victim.load(card)
        spec = victim.encoder.spec
        ship(victim.encoder, task, f"victim {victim.name}")
        for seed in args.seeds:
            torch.manual_seed(seed)
            shipped = ship(build_encoder(args.arch, spec), task,
                           f"floor {args.arch} seed {seed} at input {spec.channels}x{spec.size}")
            if floor_scores(args.arch, spec, seed, task) != shipped:  # the audit builds the same
                raise SystemExit(f"the audit's floor at seed {seed} is not the encoder shipped; check build_encoder")


if __name__ == "__main__":
    main()
