"""Pad-drop: find and drop the constant dimensions a pad+shuffle transform appends, then steal the rest.

An adaptive attack on B4B's ``shuffle_pad`` per-user transformation (Dubiński, Pawlak, Boenisch,
Trzciński, Dziedzic, "Bucks for Buckets (B4B)", NeurIPS 2023; code stapaw/b4b-active-encoder-defense,
``src/transforms/affine.py``): each account's answer is the feature with ``pad_dim`` values appended,
drawn once per account and so the same in every answer, then permuted by a fixed per-account
permutation. The notes flag it (defenses.md §1.4 [INFER]): the pads never vary across queries, so the
attacker finds them from the answers already bought, at no extra query:

1. the variance of each answer dimension across the bought images;
2. dimension j is a pad if var_j ≤ ``rel_threshold`` × the median variance of the dimensions that vary
   (relative, so the rule does not depend on the victim's feature scale; a pad's variance is exactly 0,
   a live feature's is of the order of the median);
3. the inner attack (default MSE direct extraction) trains on the kept dimensions only: the API it is
   given reports ``dim`` = the kept count, so with a stolen architecture of the victim's size no head is
   needed and the stolen encoder's output is the (permuted) kept answer itself.

The permutation does not matter: the stolen encoder learns its features in whatever order the answers
come, and a downstream probe is a linear map of its own. It does mean the stolen encoder is not in the
victim's coordinates, so ``victim_coordinates`` is False (fidelity reported as CKA only). A dead unit of
the victim (always 0) is dropped too; it carries nothing. Pads redrawn per query, or noise added after
padding, defeat step 2 (the pad dimensions then vary like noise). ``extra``: ``dropped_dims``,
``kept_dims`` and the dropped indices (of the answer as served).

>>> answers = torch.tensor([[1.0, 5.0, 0.2], [2.0, 5.0, 0.9], [4.0, 5.0, 0.4]])  # dimension 1 is a pad
>>> constant_dims(answers)
tensor([False,  True, False])
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Sequence

import torch

from sslaudit.api import Ledger, RepresentationAPI
from sslaudit.attack import AttackResult, Purchase, StealingAttack
from sslaudit.attacks.query_averaging import adopt_inner
from sslaudit.defenses.common import number
from sslaudit.models import InputSpec
from sslaudit.registry import register_attack


def constant_dims(answers: torch.Tensor, rel_threshold: float = 1e-6) -> torch.Tensor:
    """A bool mask of the dimensions whose variance across rows is ≤ ``rel_threshold`` × the median
    variance of the dimensions that vary at all (all True when none varies)."""
    if len(answers) < 2:
        raise ValueError(f"finding constant dimensions needs >= 2 answers; got {len(answers)}")
    var = answers.double().var(0, unbiased=False)
    varying = var[var > 0]
    if not len(varying):
        return torch.ones_like(var, dtype=torch.bool)
    return var <= rel_threshold * varying.median()


class KeptDims:
    """``api`` as the inner attack sees it after the drop: the same spec and ledger, answers (and ``dim``)
    restricted to the ``keep`` mask."""

    def __init__(self, api: RepresentationAPI, keep: torch.Tensor) -> None:
        self._api, self._keep = api, keep
        self.spec: InputSpec = api.spec
        self.dim = int(keep.sum())

    def query(self, images: torch.Tensor, account: str = "default") -> torch.Tensor:
        return self._api.query(images, account=account)[:, self._keep]

    def ledger(self, account: str) -> Ledger:
        return self._api.ledger(account)


@register_attack("pad-drop")
@dataclass(kw_only=True)
class PadDrop(StealingAttack):
    """Drop the answer dimensions that never vary (constant pads), train ``inner`` on the rest."""

    rel_threshold: float = 1e-6  # a pad's variance is ≤ this × the median variance of the varying dims
    inner: StealingAttack | None = None  # default DirectExtraction(loss="mse")
    victim_coordinates: ClassVar[bool] = False  # a per-account permutation: CKA, not cosine

    def __post_init__(self) -> None:
        self.rel_threshold = number("pad-drop", "rel_threshold", self.rel_threshold, "rel_threshold=1e-6",
                                    minimum=0, maximum=0.5)
        self.inner = adopt_inner(self, self.inner)

    def with_epochs(self, epochs: int) -> "PadDrop":
        inner = self.inner.with_epochs(epochs)
        return replace(self, inner=inner, train=inner.train)

    def fit(self, api: RepresentationAPI, purchase: Purchase, *, seed: int = 0,
            progress: bool = False) -> AttackResult:
        """Find the constant dimensions of the bought answers, drop them, train the inner attack."""
        pads = constant_dims(purchase.answers, self.rel_threshold)
        keep = ~pads
        if not keep.any():
            raise ValueError(f"all {len(keep)} answer dimensions are constant over {len(purchase.answers)} "
                             "answers; buy more (distinct) images")
        kept = replace(purchase, answers=purchase.answers[:, keep])
        result = self.inner.fit(KeptDims(api, keep), kept, seed=seed, progress=progress)
        result.extra.update({"dropped_dims": int(pads.sum()), "kept_dims": int(keep.sum()),
                             "dropped": pads.nonzero().flatten().tolist()})
        return result

    def account_budgets(self, budgets: Sequence[int], account: str = "attacker") -> dict[str, int]:
        return {account: max(budgets)}
