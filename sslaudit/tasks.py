"""The fixed data splits every run uses, so numbers are comparable.

- the victim trains on Fashion-MNIST train (60,000 images, labels unused);
- the attacker's ``fashion-mnist`` pool is FMNIST test[:5000] (never seen by
  the victim); the ``digits`` pool is scikit-learn's 1,797 digits (out of
  distribution), resized to the victim's input;
- downstream probes train on FMNIST train labels (all 60,000, or 1 %: 60 per
  class, drawn once with seed 0, the SimCLRv2 convention) and test on FMNIST
  test[5000:], which the attacker never queried.

>>> task = downstream_task()  # doctest: +SKIP
>>> len(task.train), len(task.few_label_index), len(task.test)  # doctest: +SKIP
(60000, 600, 5000)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sslaudit.data import ImageData, load_dataset

POOL_SIZE = 5000
# Bump when the probe's procedure changes: cached victim scores are keyed by it.
PROBE_VERSION = "probe3"  # probe3: few-label L2 by 5-fold CV, 1 % score = mean over label draws
FEW_LABEL_FRACTION = 0.01


@dataclass(frozen=True)
class DownstreamTask:
    """Labelled train/test images plus the fixed few-label subset of train."""

    name: str
    train: ImageData
    test: ImageData
    few_label_index: torch.Tensor

    def few_label_draws(self, draws: int) -> list[torch.Tensor]:
        """``draws`` stratified few-label subsets of train: the fixed one (seed 0), then seeds 1, 2, ..."""
        per_class = len(self.few_label_index) // self.train.num_classes
        return [self.few_label_index] + [stratified_index(self.train.labels, per_class, seed=s)
                                         for s in range(1, draws)]

    @property
    def key(self) -> str:
        """Identifies the split; cached scores are only reused under the same key."""
        return (f"{self.name}:train{len(self.train)}:few{len(self.few_label_index)}:test{len(self.test)}"
                f":{PROBE_VERSION}")


def stratified_index(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """``per_class`` indices of each class, drawn with ``seed`` (sorted)."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        picks.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    return torch.cat(picks).sort().values


def victim_training_data() -> ImageData:
    return load_dataset("fashion-mnist", "train")


def attack_pool(name: str, size: int = 28) -> ImageData:
    """The attacker's unlabelled pool: ``fashion-mnist`` (FMNIST test[:5000]) or ``digits``."""
    if name in ("fashion-mnist", "fmnist"):
        return load_dataset("fashion-mnist", "test").subset(slice(0, POOL_SIZE), "fashion-mnist:test[:5000]")
    if name == "digits":
        return load_dataset("digits", size=size)
    raise ValueError(f"unknown pool {name!r}; choose 'fashion-mnist' or 'digits'")


def downstream_task(train_limit: int | None = None, test_limit: int | None = None) -> DownstreamTask:
    """FMNIST probes: train labels (limits take a fixed stratified subset, for quick tests)."""
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test").subset(slice(POOL_SIZE, None), "fashion-mnist:test[5000:]")
    if train_limit is not None and train_limit < len(train):
        train = train.subset(stratified_index(train.labels, train_limit // train.num_classes, seed=1))
    if test_limit is not None and test_limit < len(test):
        test = test.subset(slice(0, test_limit))
    per_class = max(1, round(FEW_LABEL_FRACTION * len(train) / train.num_classes))
    return DownstreamTask("fashion-mnist", train, test, stratified_index(train.labels, per_class, seed=0))


def validation_task() -> DownstreamTask:
    """For choosing an attack's settings without test data: probes train on FMNIST train[:50000] and
    test on FMNIST train[50000:] (the victim saw these images unlabelled; the attacker never queried them).

    >>> task = validation_task()  # doctest: +SKIP
    """
    full = load_dataset("fashion-mnist", "train")
    train = full.subset(slice(0, 50000), "fashion-mnist:train[:50000]")
    held_out = full.subset(slice(50000, None), "fashion-mnist:train[50000:]")
    per_class = round(FEW_LABEL_FRACTION * len(train) / train.num_classes)
    return DownstreamTask("fashion-mnist-validation", train, held_out,
                          stratified_index(train.labels, per_class, seed=0))
