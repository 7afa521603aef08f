"""The fixed evaluation protocol: downstream probes, fidelity and how much was stolen.

- linear probe on frozen, standardised features, with all labels and with 1 %;
- kNN, cosine, k = 200, T = 0.1;
- fidelity: mean cosine to the victim where feature spaces match, linear CKA always;
- transfer ratio = stolen / victim; gain recovered = (stolen - floor) / (victim - floor),
  the floor being a randomly initialised encoder of the stolen architecture.

>>> scores = evaluate_encoder(encoder, downstream_task())  # doctest: +SKIP
>>> scores["linear_full"], scores["linear_1pct"], scores["knn"]  # doctest: +SKIP
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sslaudit.features import embed
from sslaudit.probe import knn_accuracy, linear_probe_accuracy
from sslaudit.tasks import DownstreamTask

METRICS = ("linear_1pct", "linear_full", "knn")
# The 1 % probe: L2 chosen by 5-fold CV over the few labels; its score is the mean over 5 draws of the
# labels (draw 0 is the task's fixed subset), and the spread over the draws is reported beside it.
FEW_LABEL_DRAWS, FEW_LABEL_FOLDS = 5, 5


def few_label_scores(train: torch.Tensor, test: torch.Tensor, task: DownstreamTask,
                     draws: int = FEW_LABEL_DRAWS, bar: tqdm | None = None) -> list[float]:
    """1 %-label probe accuracy for each of ``draws`` draws of the few labels (``bar`` ticks once per draw)."""
    ytr, yte = task.train.labels, task.test.labels
    scores = []
    for idx in task.few_label_draws(draws):
        scores.append(linear_probe_accuracy(train[idx], ytr[idx], test, yte, folds=FEW_LABEL_FOLDS))
        _tick(bar, "1 % probe")
    return scores


def _tick(bar: tqdm | None, stage: str) -> None:
    if bar is not None:
        bar.set_postfix_str(stage, refresh=False)
        bar.update()


def evaluate_features(train: torch.Tensor, test: torch.Tensor, task: DownstreamTask, *, progress: bool = False,
                      desc: str = "probe") -> dict[str, float]:
    """Probe accuracies from precomputed features of ``task.train`` and ``task.test``.

    ``linear_1pct`` is the mean over the label draws, ``linear_1pct_spread`` their standard deviation.
    ``progress`` shows a bar over the probes (each 1 % draw, the full-label probe, the kNN).
    """
    ytr, yte = task.train.labels, task.test.labels
    with tqdm(total=FEW_LABEL_DRAWS + 2, desc=desc, disable=not progress, leave=False, unit="probe") as bar:
        few = torch.tensor(few_label_scores(train, test, task, bar=bar))
        full = linear_probe_accuracy(train, ytr, test, yte)
        _tick(bar, "full-label probe")
        knn = knn_accuracy(train, ytr, test, yte)
        _tick(bar, "kNN")
    return {
        "linear_1pct": float(few.mean()),
        "linear_1pct_spread": float(few.std()) if len(few) > 1 else 0.0,
        "linear_full": full,
        "knn": knn,
    }


def evaluate_encoder(encoder: nn.Module, task: DownstreamTask, *, progress: bool = False,
                     desc: str = "evaluate") -> dict[str, float]:
    """Linear probes (1 % and all labels) and kNN of ``encoder``'s frozen features (embedded in float32)."""
    train = embed_for_eval(encoder, task.train.images, progress=progress, desc=f"{desc}: embed")
    test = embed_for_eval(encoder, task.test.images)
    return evaluate_features(train, test, task, progress=progress, desc=f"{desc}: probes")


def embed_for_eval(encoder: nn.Module, images: torch.Tensor, *, progress: bool = False,
                   desc: str = "embed") -> torch.Tensor:
    """Features for evaluation: float32, never autocast, so an encoder scores the same on every machine."""
    return embed(encoder, images, mixed_precision=False, progress=progress, desc=desc)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019): ||Yc^T Xc||_F² / (||Xc^T Xc||_F ||Yc^T Yc||_F)."""
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    cross = (y.T @ x).pow(2).sum()
    return float(cross / ((x.T @ x).pow(2).sum().sqrt() * (y.T @ y).pow(2).sum().sqrt()))


def fidelity(stolen: torch.Tensor, victim: torch.Tensor) -> dict[str, float | None]:
    """Mean cosine (None when dimensions differ) and linear CKA between paired features."""
    cosine = None
    if stolen.shape == victim.shape:
        cosine = float(F.cosine_similarity(stolen.double(), victim.double(), dim=1).mean())
    return {"cosine": cosine, "cka": linear_cka(stolen, victim)}


def transfer_ratio(stolen: float, victim: float) -> float:
    """stolen / victim accuracy on the same task."""
    return stolen / victim if victim else math.nan


def gain_recovered(stolen: float, victim: float, floor: float) -> float:
    """(stolen - floor) / (victim - floor): the share of what the victim learned that was stolen."""
    return (stolen - floor) / (victim - floor) if victim != floor else math.nan
