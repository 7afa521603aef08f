"""The honest user's path: solve the downstream task with features bought through the (defended) API.

An honest account sends every image of ``task.train`` and ``task.test`` (float in ``[0, 1]``) through
the same API the thief uses, pays for each like any account, and probes the answers with the fixed
evaluation (:func:`sslaudit.evaluate.evaluate_features`). A defence is judged by the thief's gain
recovered *and* by this account's scores. The API must allow the account ``honest_budget(task)``
queries (the audit gives it exactly that).

>>> api.set_budget("honest", honest_budget(task))  # doctest: +SKIP
>>> honest_scores(api, task).scores.linear_full  # doctest: +SKIP
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from sslaudit.api import RepresentationAPI
from sslaudit.data import ImageData
from sslaudit.evaluate import evaluate_features
from sslaudit.result import EncoderScores, HonestScores
from sslaudit.tasks import DownstreamTask

HONEST = "honest"


def honest_budget(task: DownstreamTask) -> int:
    """The queries the honest path sends: one per train and test image."""
    return len(task.train) + len(task.test)


def buy_features(api: RepresentationAPI, data: ImageData, account: str, batch_size: int = 1000,
                 progress: bool = False) -> torch.Tensor:
    """The API's answers for every image of ``data``, sent in batches (converted to float per batch)."""
    starts = tqdm(range(0, len(data), batch_size), desc=f"{account}: query", disable=not progress, leave=False,
                  unit="call")
    answers = [api.query(data.images[i : i + batch_size].float().div_(255), account=account) for i in starts]
    return torch.cat(answers) if answers else torch.empty(0, api.dim)


def honest_scores(api: RepresentationAPI, task: DownstreamTask, account: str = HONEST,
                  batch_size: int = 1000, progress: bool = False) -> HonestScores:
    """Probe scores of ``account`` on ``task`` through ``api``, with the queries, calls and cost the
    ledger charged for them (its usage before this call is not counted)."""
    before = api.ledger(account)
    train = buy_features(api, task.train, account, batch_size, progress)
    test = buy_features(api, task.test, account, batch_size)
    after = api.ledger(account)
    scores = EncoderScores.from_dict(evaluate_features(train, test, task, progress=progress, desc=f"{account}: probes"))
    return HonestScores(account=account, scores=scores, queries=after.images - before.images,
                        calls=after.calls - before.calls, cost=after.cost - before.cost)
