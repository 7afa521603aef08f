"""One stealing run end to end: victim → simulated API → attack → evaluation → a results dict.

The random-init floor (an untrained encoder of the stolen architecture) is
measured in the same run; the victim's own scores are cached in its card per
downstream split, since they depend only on the victim and the split.

>>> report = steal(victim, DirectExtraction(loss="mse"), attack_pool("fashion-mnist"), 5000, downstream_task())  # doctest: +SKIP
>>> report["stolen"]["gain_recovered"]["linear_full"]  # doctest: +SKIP
>>> reports = steal_curve(victim, DirectExtraction(loss="mse"), pool, [500, 1000, 2000, 5000], task)  # doctest: +SKIP
"""
from __future__ import annotations

import time
from typing import Sequence

import torch

from sslaudit.api import Defense, SimulatedAPI
from sslaudit.data import ImageData
from sslaudit.evaluate import METRICS, evaluate_encoder, evaluate_features, fidelity, gain_recovered, transfer_ratio
from sslaudit.features import embed
from sslaudit.models import build_encoder, count_parameters
from sslaudit.tasks import DownstreamTask
from sslaudit.runinfo import run_info
from sslaudit.victim import Victim


def victim_scores(victim: Victim, task: DownstreamTask) -> dict[str, float]:
    """The victim's probe scores on ``task``, computed once and kept in its card."""
    cached = victim.card.setdefault("scores", {}).get(task.key)
    if cached is None:
        cached = evaluate_encoder(victim.encoder, task)
        victim.card["scores"][task.key] = cached
    return cached


ATTACKER = "attacker"
_FLOORS: dict[tuple, dict[str, float]] = {}


def floor_scores(arch: str, spec: object, seed: int, task: DownstreamTask) -> dict[str, float]:
    """Probe scores of a random-init ``arch`` built with ``seed``, computed once per process."""
    key = (arch, repr(spec), seed, task.key)
    if key not in _FLOORS:
        torch.manual_seed(seed)
        _FLOORS[key] = evaluate_encoder(build_encoder(arch, spec), task)
    return _FLOORS[key]


def steal(
    victim: Victim,
    attack: object,
    pool: ImageData,
    budget: int,
    task: DownstreamTask,
    *,
    defenses: Sequence[Defense] = (),
    price_per_1k: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Run ``attack`` against ``victim`` behind a simulated API and score everything."""
    return steal_curve(victim, attack, pool, [budget], task, defenses=defenses, price_per_1k=price_per_1k,
                       seed=seed, progress=progress)[0]


def steal_curve(
    victim: Victim,
    attack: object,
    pool: ImageData,
    budgets: Sequence[int],
    task: DownstreamTask,
    *,
    defenses: Sequence[Defense] = (),
    price_per_1k: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    equal_steps: bool = False,
) -> list[dict]:
    """One report per budget from one purchase of ``max(budgets)`` queries (nested prefixes).

    The API enforces the budget: every account the attack declares (``attack.account_budgets``) gets its
    share, any other account has none, so an attack that tries to spend more is refused by the API.
    ``equal_steps`` trains every prefix for the largest budget's number of optimisation steps.
    """
    budgets = sorted(set(budgets))
    began = time.perf_counter()
    v_scores = victim_scores(victim, task)
    api = SimulatedAPI(victim.encoder, defenses=defenses, price_per_1k=price_per_1k, budget=0)
    for name, share in attack.account_budgets(budgets, ATTACKER).items():
        api.set_budget(name, share)
    attack_began = time.perf_counter()
    results = attack.run_curve(api, pool, budgets, seed=seed, account=ATTACKER, progress=progress,
                               equal_steps=equal_steps)
    attack_seconds = time.perf_counter() - attack_began
    floor_arch = results[0].encoder.arch
    floor = floor_scores(floor_arch, results[0].encoder.spec, seed, task)
    victim_test = embed(victim.encoder, task.test.images)
    ledgers = api.ledgers().values()  # every account the attack used (sybils use several)
    # What the API charged, over every account the attack used: the figures a report rests on.
    account_total, calls = sum(led.images for led in ledgers), sum(led.calls for led in ledgers)
    charged = sum(led.cost for led in ledgers)
    reports = []
    for budget, result in zip(budgets, results):
        stolen_test = embed(result.encoder, task.test.images)  # once: for the probes and for fidelity
        stolen = evaluate_features(embed(result.encoder, task.train.images), stolen_test, task)
        seconds = result.extra.get("train_seconds", attack_seconds if len(budgets) == 1 else None)
        reports.append({
            "victim": {"name": victim.name, "method": victim.card["method"], "arch": victim.card["arch"],
                       "parameters": count_parameters(victim.encoder), **v_scores},
            "floor": {"arch": floor_arch, **floor},
            "stolen": {
                "attack": type(attack).__name__,
                "config": _describe(attack),
                "arch": result.encoder.arch,
                "parameters": count_parameters(result.encoder),
                **stolen,
                "fidelity": fidelity(stolen_test, victim_test),
                "transfer_ratio": {m: transfer_ratio(stolen[m], v_scores[m]) for m in METRICS},
                "gain_recovered": {m: gain_recovered(stolen[m], v_scores[m], floor[m]) for m in METRICS},
                "train_seconds": None if seconds is None else round(seconds, 1),
                "final_loss": result.history.loss[-1] if result.history.loss else None,
                "extra": {k: v for k, v in result.extra.items() if k != "train_seconds"},
            },
            "queries": {"budget": budget, "sent": result.queries, "cost": result.cost,
                        "account_total": account_total, "calls": calls, "charged": charged,
                        "price_per_1k": price_per_1k,
                        "pool": pool.name},
            "defenses": [_describe(d) for d in defenses],
            "task": task.key,
            "run": run_info(seed=seed, wall_seconds=time.perf_counter() - began),
        })
    return reports


def _describe(obj: object) -> dict:
    fields = getattr(obj, "__dataclass_fields__", {})
    out: dict = {"name": type(obj).__name__}
    for name in fields:
        if not name.startswith("_"):
            value = getattr(obj, name)
            out[name] = _describe(value) if hasattr(value, "__dataclass_fields__") else value
    return out
