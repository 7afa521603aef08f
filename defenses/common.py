"""What every defence shares: one-line setting checks, thread-safe per-account state, the feature scale.

A defence sits in the API's response path: ``defence(account, images, features) -> features``. It may
also have ``bind(secret) -> defence`` (a fresh copy keyed by the deployment's secret, with no state)
and ``calibrate(features) -> None`` (the provider's own clean features, e.g. of its training data,
given once by :class:`~sslaudit.api.SimulatedAPI` before the first query). The API calls defences
outside its metering lock, possibly from many threads at once, so per-account state lives in a
:class:`PerAccount` map, whose updates are atomic per account.

>>> number("noise", "sigma", 0.5, "sigma=0.1", minimum=0.0)
0.5
>>> number("noise", "sigma", -1, "sigma=0.1", minimum=0.0)
Traceback (most recent call last):
ValueError: noise sigma must be a finite number >= 0 (e.g. sigma=0.1); got -1
>>> state = PerAccount(list)
>>> state.update("alice", lambda seen: seen.append(1) or len(seen))
1
>>> state.peek("bob") is None  # reading never creates an account
True
"""
from __future__ import annotations

import math
import threading
from numbers import Integral, Real
from typing import Callable, Generic, TypeVar

import torch

S = TypeVar("S")
R = TypeVar("R")


def number(defence: str, name: str, value: object, example: str, minimum: float | None = None,
           strict: bool = False, maximum: float | None = None) -> float:
    """``value`` as a float, or a one-line ValueError naming the defence, the setting and an example."""
    bounds = ([f"{'>' if strict else '>='} {minimum:g}"] if minimum is not None else []) + (
        [f"<= {maximum:g}"] if maximum is not None else [])
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        bound = (" " + " and ".join(bounds)) if bounds else ""
        raise ValueError(f"{defence} {name} must be a finite number{bound} (e.g. {example}); got {value!r}")
    return float(value)


def integer(defence: str, name: str, value: object, example: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, or a one-line ValueError."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{defence} {name} must be an int >= {minimum} (e.g. {example}); got {value!r}")
    return int(value)


def choice(defence: str, name: str, value: object, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, or a one-line ValueError listing them."""
    if value not in allowed:
        raise ValueError(f"{defence} {name} must be one of {', '.join(allowed)}; got {value!r}")
    return str(value)


def flag(defence: str, name: str, value: object) -> bool:
    """``value`` if it is a bool, or a one-line ValueError."""
    if not isinstance(value, bool):
        raise ValueError(f"{defence} {name} must be true or false; got {value!r}")
    return value


def feature_scale(features: torch.Tensor) -> float:
    """The root-mean-square feature value, ``mean ||v|| / sqrt(d)``: noise ``sigma × scale`` means the same
    fraction of the signal on any victim (1.0 for a batch of unit-RMS vectors)."""
    if not len(features):
        return 0.0
    return features.float().norm(dim=1).mean().item() / features.shape[1] ** 0.5


class PerAccount(Generic[S]):
    """Per-account state, created by ``factory()`` on an account's first update; never shared between
    accounts, and each update runs under that account's lock (so concurrent calls of one account are
    serialised, different accounts run in parallel)."""

    def __init__(self, factory: Callable[[], S], derived: bool = False) -> None:
        self._factory = factory
        self._states: dict[str, S] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.derived = derived  # a cache recomputable from the secret: never worth persisting
        self._load: Callable[[str, S], S | None] | None = None
        self._save: Callable[[str, S], None] | None = None

    def persist(self, load: Callable[[str, S], S | None], save: Callable[[str, S], None]) -> None:
        """Keep every account's state outside the process: ``load(account, fresh)`` gives the stored state
        (or None) on the account's first update here, and ``save(account, state)`` runs after each update,
        under the account's lock (a served API's state survives restarts)."""
        self._load, self._save = load, save

    def update(self, account: str, fn: Callable[[S], R]) -> R:
        """``fn(state)`` under ``account``'s lock (the state is created first if new); returns its result."""
        with self._guard:
            if account not in self._states:
                stored = self._stored(account)
                self._states[account] = self._factory() if stored is None else stored
                self._locks[account] = threading.Lock()
            lock = self._locks[account]
        with lock:
            state = self._states[account]
            result = fn(state)
            if self._save:
                self._save(account, state)
            return result

    def _stored(self, account: str) -> S | None:
        """The persisted state of an account not yet seen by this process (the guard must be held)."""
        return self._load(account, self._factory()) if self._load else None

    def peek(self, account: str) -> S | None:
        """The account's state, or None if it never queried (creates nothing)."""
        with self._guard:
            if account not in self._states:
                stored = self._stored(account)
                if stored is not None:
                    self._states[account], self._locks[account] = stored, threading.Lock()
            return self._states.get(account)

    def accounts(self) -> list[str]:
        with self._guard:
            return list(self._states)
