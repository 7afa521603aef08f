"""The representation API: ``query(images, account=...) -> features``, metered per account.

A simulated API serves a victim the way a provider would: every image sent is
one query (repeats and augmented copies included), each account has a ledger
(images, calls, cost at a price per 1,000 images, compute time, rate-limit
waits) and an optional budget, and the answer passes through a chain of
defences before it leaves. Attacks only ever see this interface.

>>> api = SimulatedAPI(victim, price_per_1k=0.5, budget=5000)  # doctest: +SKIP
>>> feats = api.query(images, account="alice")  # doctest: +SKIP
>>> api.ledger("alice").images  # doctest: +SKIP
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, replace
from numbers import Integral, Real
from typing import Protocol, Sequence, runtime_checkable

import torch

from sslaudit.device import autocast, fast_layout, pick_device
from sslaudit.models import Encoder, InputSpec
from sslaudit.secret import DeploymentSecret


class QueryBudgetExceeded(RuntimeError):
    """An account asked for more images than its budget allows; nothing was answered."""


class InvalidQuery(ValueError):
    """The images sent do not match what the API accepts; the message says what to send."""


class QueryRefused(RuntimeError):
    """A defence refused to answer this account (e.g. a detector flagged it); nothing was answered or charged."""


class UnsafeAnswer(RuntimeError):
    """An answer held NaN or infinity; it was refused and nothing was charged. The message names the stage."""


@runtime_checkable
class Defense(Protocol):
    """Sees what the API sees and returns the features to send back; one with per-deployment state or
    randomness also has ``bind(secret) -> Defense``, which the API calls once and serves the result, and
    one that needs the provider's clean features (a centre, a scale, a benign threshold) has
    ``calibrate(features) -> None``, called once with the encoder's (raw, undefended) features of
    ``calibration`` images. One that changes the served size has ``out_dim(dim) -> int``.
    A defence refuses an account by raising :class:`QueryRefused`."""

    def __call__(self, account: str, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class RepresentationAPI(Protocol):
    """What an attack is given: an input spec, a feature size and ``query``."""

    spec: InputSpec
    dim: int

    def query(self, images: torch.Tensor, account: str = "default") -> torch.Tensor: ...

    def ledger(self, account: str) -> "Ledger": ...


@dataclass
class Ledger:
    """One account's usage. ``images`` is the number of queries (one image = one query)."""

    images: int = 0
    calls: int = 0
    cost: float = 0.0
    compute_seconds: float = 0.0
    rate_limit_wait_seconds: float = 0.0
    budget: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def validate_images(images: object, spec: InputSpec) -> torch.Tensor:
    """Check a query batch against ``spec``; raise :class:`InvalidQuery` saying what to send.

    Any floating dtype is accepted and converted to float32 (float32 input is returned as is).
    """
    want = f"float images of shape (B, {spec.channels}, {spec.size}, {spec.size}) with values in [0, 1]"
    if not isinstance(images, torch.Tensor):
        raise InvalidQuery(f"send a torch.Tensor of {want}, not {type(images).__name__}")
    if images.dtype == torch.uint8:
        raise InvalidQuery(f"got uint8 images; send {want} (divide by 255)")
    if not images.is_floating_point():
        raise InvalidQuery(f"got dtype {images.dtype}; send {want}")
    if images.ndim != 4 or tuple(images.shape[1:]) != (spec.channels, spec.size, spec.size):
        raise InvalidQuery(f"got shape {tuple(images.shape)}; send {want}")
    if not torch.isfinite(images).all():
        raise InvalidQuery("images contain NaN or infinity; send finite values in [0, 1]")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise InvalidQuery(f"values span [{images.min():.3g}, {images.max():.3g}]; send {want}")
    return images if images.dtype == torch.float32 else images.float()


def check_account(account: object) -> str:
    """``account`` if it is a non-empty string, else :class:`InvalidQuery`."""
    if not isinstance(account, str) or not account:
        raise InvalidQuery(f"account must be a non-empty string; got {account!r}")
    return account


def _int(name: str, value: object, low: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low} ({what}); got {value!r}")
    return int(value)


def _number(name: str, value: object, low: float, strict: bool, what: str) -> float:
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low:g} ({what}); got {value!r}")
    return float(value)


class SimulatedAPI:
    """Serve ``encoder`` behind per-account metering, budgets, a rate limit and defences.

    ``budget`` is the default per-account query budget (None: unlimited); ``rate_limit`` is images per
    second per account, accounted on a simulated clock (the ledger records how long a real client would
    have had to wait). ``secret`` keys the defences' randomness (default :meth:`DeploymentSecret.from_env`:
    random unless ``$SSLAUDIT_SECRET`` is set); every defence with a ``bind`` method is bound to it and
    the bound copy is served, so one defence instance given to two APIs shares no state between them.
    ``calibration``: the provider's own images (float, in ``[0, 1]``; e.g. a sample of the victim's
    training data); every defence with a ``calibrate`` method is given the encoder's clean features of them
    once, here. An empty batch ``(0, C, H, W)`` is a no-op: a ``(0, dim)`` answer, nothing charged, no call
    counted.
    """

    def __init__(self, encoder: Encoder, *, defenses: Sequence[Defense] = (), price_per_1k: float = 0.0,
                 budget: int | None = None, rate_limit: float | None = None, max_batch: int = 4096,
                 device: torch.device | None = None, secret: DeploymentSecret | None = None,
                 calibration: torch.Tensor | None = None) -> None:
        self.price_per_1k = _number("price_per_1k", price_per_1k, 0, False, "price per 1,000 images")
        self.rate_limit = None if rate_limit is None else _number(
            "rate_limit", rate_limit, 0, True, "images per second, or None")
        if secret is not None and not isinstance(secret, DeploymentSecret):
            raise ValueError("secret must be a DeploymentSecret or None (random per deployment)")
        self.default_budget = None if budget is None else _int("budget", budget, 0, "queries per account, or None")
        self.max_batch = _int("max_batch", max_batch, 1, "images per call")
        self._encoder = encoder.eval()
        self._device = device or pick_device()
        fast_layout(self._encoder.to(self._device))
        self.spec, self.dim = encoder.spec, encoder.dim
        self._secret = secret if secret is not None else DeploymentSecret.from_env()
        self.defenses = [d.bind(self._secret) if hasattr(d, "bind") else d for d in defenses]
        for defense in self.defenses:  # a defence that changes the served size says so (pad, binarise, truncate)
            self.dim = defense.out_dim(self.dim) if hasattr(defense, "out_dim") else self.dim
        needs = [d for d in self.defenses if hasattr(d, "calibrate")]
        if needs and calibration is None:
            raise ValueError(f"{type(needs[0]).__name__} needs the provider's clean features: pass "
                             "SimulatedAPI(calibration=images), e.g. 2,000 of the victim's training images")
        if needs:
            clean = self.clean_features(validate_images(calibration, self.spec))
            for defense in needs:
                defense.calibrate(clean)
        self._ledgers: dict[str, Ledger] = {}
        self._lock = threading.Lock()  # guards every ledger: check-and-charge is one step

    def ledger(self, account: str) -> Ledger:
        """A copy of ``account``'s ledger; an empty one (not stored) if it never queried."""
        check_account(account)
        with self._lock:
            return replace(self._ledgers.get(account) or Ledger(budget=self.default_budget))

    def ledgers(self) -> dict[str, Ledger]:
        """Copies of the ledgers of the accounts that were charged or given a budget."""
        with self._lock:
            return {name: replace(led) for name, led in self._ledgers.items()}

    def set_budget(self, account: str, budget: int | None) -> None:
        """Give ``account`` a budget of ``budget`` queries in all (None: unlimited)."""
        check_account(account)
        budget = None if budget is None else _int("budget", budget, 0, "queries in all, or None: unlimited")
        with self._lock:
            self._ledgers.setdefault(account, Ledger(budget=self.default_budget)).budget = budget

    def remaining(self, account: str) -> int | None:
        """Queries ``account`` may still send (None: unlimited)."""
        led = self.ledger(account)
        return None if led.budget is None else led.budget - led.images

    def _charge(self, account: str, n: int, calls: int) -> None:
        """Add ``n`` images and ``calls`` calls (negative: a refund); the lock must be held."""
        led = self._ledgers.setdefault(account, Ledger(budget=self.default_budget))
        led.images += n
        led.calls += calls
        led.cost = led.images * self.price_per_1k / 1000
        led.rate_limit_wait_seconds = led.images / self.rate_limit if self.rate_limit else 0.0
        if led == Ledger(budget=self.default_budget):  # refunded to nothing: as if never seen
            del self._ledgers[account]

    @torch.no_grad()
    def clean_features(self, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """The encoder's undefended features of ``images`` (provider side: nothing metered, never served)."""
        out = []
        for i in range(0, len(images), batch_size):
            with autocast(self._device):
                out.append(self._encoder(images[i:i + batch_size].to(self._device)).float().cpu())
        return torch.cat(out) if out else torch.empty(0, self._encoder.dim)

    def _answer(self, account: str, images: torch.Tensor) -> torch.Tensor:
        batch = images.to(self._device)
        with autocast(self._device):
            features = self._encoder(batch).float()
        _check_finite(features, "the encoder (NaN/inf weights, or an input spec with std 0?)")
        for defense in self.defenses:
            features = defense(account, batch, features)
            _check_finite(features, f"defence {getattr(defense, '__name__', type(defense).__name__)}")
        return features.cpu()

    @torch.no_grad()
    def query(self, images: torch.Tensor, account: str = "default") -> torch.Tensor:
        """Features for ``images`` as seen by ``account``; each image counts as one query.

        The images are reserved (checked against the budget and charged) atomically before any computing,
        so concurrent callers never overrun a budget; the reservation is refunded only if the API fails
        (the encoder or a defence raises, or returns NaN/inf: :class:`UnsafeAnswer`).
        """
        check_account(account)
        images = validate_images(images, self.spec)
        n = len(images)
        if n > self.max_batch:
            raise InvalidQuery(f"at most {self.max_batch} images per call; got {n}, split the batch")
        if n == 0:
            return torch.empty(0, self.dim)
        with self._lock:  # reserve: check and charge in one step, before any computing
            led = self._ledgers.get(account) or Ledger(budget=self.default_budget)
            if led.budget is not None and led.images + n > led.budget:
                raise QueryBudgetExceeded(f"account {account!r} has {led.budget - led.images} of {led.budget}"
                                          f" queries left and sent {n}; nothing was answered")
            self._charge(account, n, 1)
        began = time.perf_counter()
        try:
            features = self._answer(account, images)
        except BaseException:
            with self._lock:  # nothing left the API: give the reservation back
                self._charge(account, -n, -1)
            raise
        with self._lock:
            self._ledgers[account].compute_seconds += time.perf_counter() - began
        return features


def _check_finite(features: object, stage: str) -> None:
    if not isinstance(features, torch.Tensor) or not torch.isfinite(features).all():
        raise UnsafeAnswer(f"{stage} returned NaN or infinity (or no tensor); the answer was refused, not charged")
