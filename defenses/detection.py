"""What a stateful query detector does once it flags an account, and what it records per account.

Shared by the query-pattern detectors (``knn-detector``: Chen, Carlini & Wagner, "Stateful Detection of
Black-Box Adversarial Attacks", ACM AsiaCCS SPAI workshop 2020 / arXiv 1907.05587, code
schoyc/blackbox-detection; ``prada``: Juuti, Szyller, Marchal & Asokan, "PRADA: Protecting against DNN
Model Stealing Attacks", IEEE EuroS&P 2019). A detector turns each query of an account into a statistic
(NaN: not scored) and alarms when it falls below a limit; neither paper says what the API does next, so
``action`` chooses:

* ``observe``: answers never change; the record says whether and when the account was flagged.
* ``refuse``: the call in which the first alarm fires, and every later call of that account, raise
  :class:`~sslaudit.api.QueryRefused` (the API refunds it; nothing is answered). Choice: the whole
  triggering call is refused, not only its images from the alarm on, since the API answers a call all
  or nothing; answering the images before the alarm would hand over up to a batch more.
* ``poison``: from the alarming image on (within that call too) answers are replaced by noise, as in the
  ICML'22 defence's garbage response (Dziedzic et al., code cleverhans-lab/ssl-attacks-defenses), which
  answers ``N(1000, sigma)``. Ours is moment-matched instead, so it is not recognisable by its scale:
  per dimension the mean and std of the provider's clean features (from ``calibrate``), or before any
  calibration the batch's RMS value (:func:`~sslaudit.defenses.common.feature_scale`) times ``N(0, 1)``.
  It is drawn from the deployment secret, one stream per account.

Scoring continues after the flag (except under ``refuse``, where nothing more is answered), so the
record's ``min_score`` is the most alarming statistic over the whole stream. Unlike Chen et al.'s code,
memory is not cleared on an alarm: an account is flagged once. All state is per account
(:class:`~sslaudit.defenses.common.PerAccount`), one account's calls serialised, others in parallel.

>>> record = AccountRecord(queries=120, flagged=True, first_alarm=101, min_score=0.02, refused=20)
>>> record.first_alarm, record.answered
(101, 100)
>>> check_action("knn-detector", "drop")
Traceback (most recent call last):
ValueError: knn-detector action must be one of observe, refuse, poison; got 'drop'
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, replace
from typing import ClassVar, TypeVar

import torch

from sslaudit.api import QueryRefused
from sslaudit.defenses.common import PerAccount, choice, feature_scale, flag
from sslaudit.secret import DeploymentSecret

ACTIONS = ("observe", "refuse", "poison")
PURPOSE = "detector-poison"
D = TypeVar("D", bound="StatefulDetector")


def check_action(defence: str, action: object) -> str:
    """``action`` if it is one of :data:`ACTIONS`, else a one-line ValueError."""
    return choice(defence, "action", action, ACTIONS)


@dataclass(frozen=True)
class AccountRecord:
    """One account as the detector saw it. ``queries``: images received (refused ones included);
    ``first_alarm``: the 1-based number of the query that raised the first alarm (queries until the
    alarm), None if never; ``min_score``: the most alarming statistic seen (None: nothing scored yet);
    ``refused``: images refused; ``scores``: every query's statistic (NaN: not scored), kept only
    with ``trace=True``."""

    queries: int
    flagged: bool
    first_alarm: int | None
    min_score: float | None
    refused: int = 0
    scores: tuple[float, ...] = ()

    @property
    def answered(self) -> int:
        return self.queries - self.refused


@dataclass
class AccountState:
    """The mutable per-account part every detector has; a detector subclasses it for its memory."""

    queries: int = 0
    flagged: bool = False
    first_alarm: int | None = None
    min_score: float = math.inf
    refused: int = 0
    scores: list[float] = field(default_factory=list)
    noise: torch.Generator | None = None


@dataclass(kw_only=True)
class StatefulDetector:
    """The shared ``__call__``: score the batch in order (subclass's ``_scores``), record, then act."""

    name: ClassVar[str] = "detector"
    action: str = "observe"
    trace: bool = False
    secret: DeploymentSecret | None = None
    _accounts: PerAccount = field(init=False, repr=False, compare=False)
    _noise_mean: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _noise_std: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _own: DeploymentSecret | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.action = check_action(self.name, self.action)
        self.trace = flag(self.name, "trace", self.trace)
        if self.secret is not None and not isinstance(self.secret, DeploymentSecret):
            raise ValueError(f"{self.name} secret must be a DeploymentSecret (or None for the API's own)")
        self._accounts = PerAccount(self._new_state)
        self._lock = threading.Lock()

    # what a detector supplies
    def _new_state(self) -> AccountState:
        return AccountState()

    def _limit(self) -> float:
        """Alarm when a statistic is below this."""
        raise NotImplementedError

    def _scores(self, state: AccountState, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Each query's statistic in order (NaN: not scored), updating the account's memory."""
        raise NotImplementedError

    # the shared part
    def bind(self: D, secret: DeploymentSecret) -> D:
        """A fresh copy for one deployment (no accounts yet), keyed by ``self.secret`` or else ``secret``."""
        return replace(self, secret=self.secret if self.secret is not None else secret)

    def calibrate(self, features: torch.Tensor) -> None:
        """Keep the clean features' per-dimension mean and std, the moments of ``poison``'s noise."""
        clean = features.detach().float().cpu()
        if len(clean) > 1:
            self._noise_mean, self._noise_std = clean.mean(0), clean.std(0)

    def report(self, account: str) -> AccountRecord:
        """A copy of ``account``'s record (an empty one if it never queried)."""
        state = self._accounts.peek(account)
        if state is None:
            return AccountRecord(0, False, None, None)
        return self._accounts.update(account, lambda s: AccountRecord(
            s.queries, s.flagged, s.first_alarm, None if s.min_score == math.inf else s.min_score,
            s.refused, tuple(s.scores)))

    def telemetry(self, account: str) -> dict[str, object]:
        """What the audit reports of ``account``: its record without the per-query trace."""
        record = self.report(account)
        return {"queries": record.queries, "flagged": record.flagged, "first_alarm": record.first_alarm,
                "min_score": record.min_score, "refused": record.refused}

    def accounts(self) -> list[str]:
        """The accounts seen so far."""
        return self._accounts.accounts()

    def __call__(self, account: str, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self._accounts.update(account, lambda state: self._step(account, state, images, features))

    def _refuse(self, account: str, state: AccountState, n: int) -> None:
        state.refused += n
        raise QueryRefused(f"account {account!r} was flagged by {self.name} at query {state.first_alarm}; "
                           "it is refused from then on")

    def _step(self, account: str, state: AccountState, images: torch.Tensor,
              features: torch.Tensor) -> torch.Tensor:
        n = len(features)
        if state.flagged and self.action == "refuse":
            state.queries += n
            self._refuse(account, state, n)
        if n == 0:
            return features
        limit = self._limit()
        scores = self._scores(state, images, features).detach().double().cpu()
        before, state.queries = state.queries, state.queries + n
        scored = scores[~scores.isnan()]
        if len(scored):
            state.min_score = min(state.min_score, scored.min().item())
        if self.trace:
            state.scores.extend(scores.tolist())
        start = 0 if state.flagged else n  # the first image to poison
        if not state.flagged:
            hits = torch.nonzero(scores < limit).flatten()  # NaN compares False: unscored never alarms
            if len(hits):
                start = int(hits[0])
                state.flagged, state.first_alarm = True, before + start + 1
                if self.action == "refuse":
                    self._refuse(account, state, n)
        if self.action != "poison" or start == n:
            return features
        out = features.clone()
        out[start:] = self._noise(account, state, features[start:]).to(features.device, features.dtype)
        return out

    def _deployment_secret(self) -> DeploymentSecret:
        """``secret``, or (never bound) the detector's own, drawn once by :meth:`DeploymentSecret.from_env`."""
        if self.secret is not None:
            return self.secret
        with self._lock:
            if self._own is None:
                self._own = DeploymentSecret.from_env()
            return self._own

    def _noise(self, account: str, state: AccountState, clean: torch.Tensor) -> torch.Tensor:
        if state.noise is None:
            state.noise = self._deployment_secret().generator(PURPOSE, account)
        z = torch.randn(clean.shape, generator=state.noise)
        if self._noise_mean is not None and self._noise_std is not None and len(self._noise_mean) == clean.shape[1]:
            return self._noise_mean + self._noise_std * z
        return feature_scale(clean) * z
