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

from sslaudit.features import embed
from sslaudit.probe import knn_accuracy, linear_probe_accuracy
from sslaudit.tasks import DownstreamTask

METRICS = ("linear_1pct", "linear_full", "knn")


def evaluate_features(train: torch.Tensor, test: torch.Tensor, task: DownstreamTask) -> dict[str, float]:
    """Probe accuracies from precomputed features of ``task.train`` and ``task.test``."""
    ytr, yte, few = task.train.labels, task.test.labels, task.few_label_index
    return {
        "linear_1pct": linear_probe_accuracy(train[few], ytr[few], test, yte),
        "linear_full": linear_probe_accuracy(train, ytr, test, yte),
        "knn": knn_accuracy(train, ytr, test, yte),
    }


def evaluate_encoder(encoder: nn.Module, task: DownstreamTask) -> dict[str, float]:
    """Linear probes (1 % and all labels) and kNN of ``encoder``'s frozen features."""
    return evaluate_features(embed(encoder, task.train.images), embed(encoder, task.test.images), task)


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
