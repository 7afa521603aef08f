"""One stealing run end to end: victim → simulated API → attack → evaluation → a :class:`StealResult`.

The random-init floor (an untrained encoder of the stolen architecture) is measured in the same run;
the victim's and the floor's scores come from the on-disk score cache (:mod:`sslaudit.score_cache`),
since they depend only on the encoder and the task; evaluation never writes into a victim's card.
With ``honest=True`` an honest account solves the task through the same (defended) API, and each
result carries its scores beside the victim's direct ones.

>>> result = steal(victim, DirectExtraction(loss="mse"), pool, 5000, downstream_task(), honest=True)  # doctest: +SKIP
>>> result.stolen.gain_recovered.linear_full  # doctest: +SKIP
>>> results = steal_curve(victim, DirectExtraction(loss="mse"), pool, [500, 1000, 2000, 5000], task)  # doctest: +SKIP
"""
from __future__ import annotations

import math
import time
from dataclasses import fields, is_dataclass, replace
from typing import Callable, Sequence

import torch

from sslaudit.api import Defense, RepresentationAPI, SimulatedAPI
from sslaudit.attack import Attack
from sslaudit.data import ImageData
from sslaudit.evaluate import METRICS, embed_for_eval, evaluate_features, fidelity, gain_recovered, transfer_ratio
from sslaudit.honest import HONEST, honest_budget, honest_scores
from sslaudit.models import build_encoder, count_parameters
from sslaudit.result import (EncoderScores, Fidelity, FloorRow, QueryAccount, Ratios, StealResult, StolenRow,
                             VictimRow)
from sslaudit.runinfo import run_info
from sslaudit.score_cache import cached_scores
from sslaudit.secret import DeploymentSecret
from sslaudit.tasks import DownstreamTask
from sslaudit.victim import Victim

ATTACKER = "attacker"
CALIBRATION_IMAGES = 2000


def provider_sample(task: DownstreamTask, n: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """The provider's own clean images that calibrate defences (B4B's centre and scale, detectors'
    thresholds): a fixed, seeded sample of ``n`` images of ``task.train``, float in ``[0, 1]``.

    Choice: the shipped victims are trained on the task's train split, so this stands for "a sample of
    the victim's training data", which a provider has; the test split is never used.
    """
    gen = torch.Generator().manual_seed(20231008)  # fixed: the same provider sample in every run
    index = torch.randperm(len(task.train), generator=gen)[:n]
    return task.train.images[index].float().div_(255)


def victim_scores(victim: Victim, task: DownstreamTask, progress: bool = False) -> dict[str, float]:
    """The victim's probe scores on ``task``, measured on its encoder once and kept in the score cache."""
    return cached_scores(victim.encoder, task, progress=progress, desc="evaluate victim")


def floor_scores(arch: str, spec: object, seed: int, task: DownstreamTask, progress: bool = False) -> dict[str, float]:
    """Probe scores of a random-init ``arch`` built with ``seed`` (cached by the weights' content hash)."""
    torch.manual_seed(seed)
    return cached_scores(build_encoder(arch, spec), task, progress=progress, desc="evaluate random init")


def _ratios(fn: Callable[..., float], a: EncoderScores, *rest: EncoderScores) -> Ratios:
    """``fn(a.m, *(r.m for r in rest))`` for each metric ``m``; None where undefined (NaN: victim = floor)."""
    values = (fn(getattr(a, m), *(getattr(r, m) for r in rest)) for m in METRICS)
    return Ratios(*(None if v is None or math.isnan(v) else v for v in values))


def steal(
    victim: Victim,
    attack: Attack,
    pool: ImageData,
    budget: int,
    task: DownstreamTask,
    *,
    defenses: Sequence[Defense] = (),
    price_per_1k: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    honest: bool = False,
    secret: DeploymentSecret | None = None,
) -> StealResult:
    """Run ``attack`` against ``victim`` behind a simulated API and score everything."""
    return steal_curve(victim, attack, pool, [budget], task, defenses=defenses, price_per_1k=price_per_1k,
                       seed=seed, progress=progress, honest=honest, secret=secret)[0]


def steal_curve(
    victim: Victim,
    attack: Attack,
    pool: ImageData,
    budgets: Sequence[int],
    task: DownstreamTask,
    *,
    defenses: Sequence[Defense] = (),
    price_per_1k: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    equal_steps: bool = False,
    honest: bool = False,
    secret: DeploymentSecret | None = None,
    encoders: list | None = None,
    api: RepresentationAPI | None = None,
) -> list[StealResult]:
    """One result per budget from one purchase of ``max(budgets)`` queries (nested prefixes).

    The API enforces the budget: every account the attack declares (``attack.account_budgets``) gets its
    share, any other account has none, so an attack that tries to spend more is refused by the API.
    ``equal_steps`` trains every prefix for the largest budget's number of optimisation steps.
    ``honest``: the same API (same defences, same ``secret``) also serves the account ``"honest"``, with a
    budget of one query per task image, which solves ``task`` through it (:func:`honest_scores`).
    Fidelity cosine is None for attacks whose ``victim_coordinates`` is False (CKA only).
    ``encoders``: a list that receives the stolen encoders, one per budget in budget order (a
    :class:`StealResult` holds none), e.g. to save one for ``sslaudit verify``.
    ``api``: attack this API instead of a simulated one over ``victim.encoder`` (e.g. a
    :class:`~sslaudit.remote.RemoteAPI`: the endpoint enforces its own budgets and defences, and the
    report's account totals are the server's; ``defenses`` and ``honest`` need the simulated API).
    """
    budgets = sorted(set(budgets))
    began = time.perf_counter()
    v_scores = EncoderScores.from_dict(victim_scores(victim, task, progress))
    shares = attack.account_budgets(budgets, ATTACKER)
    if api is None:
        calibration = provider_sample(task) if any(hasattr(d, "calibrate") for d in defenses) else None
        api = SimulatedAPI(victim.encoder, defenses=defenses, price_per_1k=price_per_1k, budget=0, secret=secret,
                           calibration=calibration)
        for name, share in shares.items():
            api.set_budget(name, share)
    elif defenses or honest:
        raise ValueError("defences and the honest user need the simulated API; configure them on the endpoint")
    if honest and HONEST in shares:
        raise ValueError(f"the attack declares the account {HONEST!r}, which the honest user's path uses")
    attack_began = time.perf_counter()
    results = attack.run_curve(api, pool, budgets, seed=seed, account=ATTACKER, progress=progress,
                               equal_steps=equal_steps)
    attack_seconds = time.perf_counter() - attack_began
    if encoders is not None:
        encoders.extend(r.encoder for r in results)
    honest_row = None
    if honest:
        api.set_budget(HONEST, honest_budget(task))
        honest_row = honest_scores(api, task, HONEST, progress=progress)
        honest_row = replace(honest_row, utility=_ratios(transfer_ratio, honest_row.scores, v_scores))
    floor = FloorRow(results[0].encoder.arch, EncoderScores.from_dict(
        floor_scores(results[0].encoder.arch, results[0].encoder.spec, seed, task, progress)))
    victim_row = VictimRow(victim.name, victim.card["method"], victim.card["arch"],
                           count_parameters(victim.encoder), v_scores)
    victim_test = embed_for_eval(victim.encoder, task.test.images)
    # What the API charged, over every account the attack used (sybils use several): the figures a report
    # rests on. The honest account is not the attacker's.
    ledgers = [api.ledger(name) for name in shares]  # the API gives no other account a budget
    account_total, calls = sum(led.images for led in ledgers), sum(led.calls for led in ledgers)
    charged = sum(led.cost for led in ledgers)
    state = defense_state(api)
    same_space = getattr(attack, "victim_coordinates", True)
    config, described = _describe(attack), [_describe(d) for d in defenses]
    reports = []
    for budget, result in zip(budgets, results):
        stolen_test = embed_for_eval(result.encoder, task.test.images)  # once: for the probes and for fidelity
        stolen_train = embed_for_eval(result.encoder, task.train.images, progress=progress,
                                      desc=f"evaluate stolen ({budget}): embed")
        scores = EncoderScores.from_dict(evaluate_features(stolen_train, stolen_test, task, progress=progress,
                                                           desc=f"evaluate stolen ({budget}): probes"))
        fid = fidelity(stolen_test, victim_test)
        seconds = result.extra.get("train_seconds", attack_seconds if len(budgets) == 1 else None)
        stolen = StolenRow(
            attack=type(attack).__name__, config=config, arch=result.encoder.arch,
            parameters=count_parameters(result.encoder), scores=scores,
            fidelity=Fidelity(cosine=fid["cosine"] if same_space else None, cka=fid["cka"]),
            transfer_ratio=_ratios(transfer_ratio, scores, v_scores),
            gain_recovered=_ratios(gain_recovered, scores, v_scores, floor.scores),
            train_seconds=None if seconds is None else round(seconds, 1),
            final_loss=result.history.loss[-1] if result.history.loss else None,
            extra=_plain({**{k: v for k, v in result.extra.items() if k != "train_seconds"},
                          **({"defense_state": state} if state else {})}))
        queries = QueryAccount(budget=budget, sent=result.queries, cost=result.cost, account_total=account_total,
                               calls=calls, charged=charged, price_per_1k=price_per_1k, pool=pool.name)
        reports.append(StealResult(victim_row, floor, stolen, queries, described, task.key,
                                   run_info(seed=seed, wall_seconds=time.perf_counter() - began), honest_row))
    return reports


def defense_state(api: SimulatedAPI) -> dict[str, dict[str, object]]:
    """Each served defence's ``telemetry(account)`` (B4B's coverage and σ, a detector's flag and queries to
    the alarm) for every account the API charged, keyed ``"<index>:<DefenceName>"``; empty without any."""
    out: dict[str, dict[str, object]] = {}
    for i, defense in enumerate(getattr(api, "defenses", ())):
        if hasattr(defense, "telemetry"):
            out[f"{i}:{type(defense).__name__}"] = {name: _plain(defense.telemetry(name)) for name in api.ledgers()}
    return out


def _plain(value: object) -> object:
    """``value`` as plain JSON data: dataclasses described, tuples as lists, anything else as its repr
    (a :class:`DeploymentSecret` shows as ``DeploymentSecret(<hidden>, ...)``, never its key)."""
    if is_dataclass(value) and not isinstance(value, type):
        return _describe(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _describe(obj: object) -> dict:
    out: dict = {"name": type(obj).__name__}
    for f in fields(obj) if is_dataclass(obj) else ():  # fields() leaves out ClassVars
        if not f.name.startswith("_"):
            out[f.name] = _plain(getattr(obj, f.name))
    return out
