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

import time
from dataclasses import asdict, dataclass, replace
from typing import Protocol, Sequence, runtime_checkable

import torch

from sslaudit.device import autocast, pick_device
from sslaudit.models import Encoder, InputSpec


class QueryBudgetExceeded(RuntimeError):
    """An account asked for more images than its budget allows; nothing was answered."""


class InvalidQuery(ValueError):
    """The images sent do not match what the API accepts; the message says what to send."""


@runtime_checkable
class Defense(Protocol):
    """Sees what the API sees and returns the features to send back."""

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
    """Check a query batch against ``spec``; raise :class:`InvalidQuery` saying what to send."""
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
    return images


class SimulatedAPI:
    """Serve ``encoder`` behind per-account metering, budgets, a rate limit and defences.

    ``budget`` is the default per-account query budget (None: unlimited);
    ``rate_limit`` is images per second per account, accounted on a simulated
    clock (the ledger records how long a real client would have had to wait).
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        defenses: Sequence[Defense] = (),
        price_per_1k: float = 0.0,
        budget: int | None = None,
        rate_limit: float | None = None,
        max_batch: int = 4096,
        device: torch.device | None = None,
    ) -> None:
        if price_per_1k < 0:
            raise ValueError("price_per_1k must be non-negative")
        if budget is not None and budget < 0:
            raise ValueError("budget must be non-negative or None")
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError("rate_limit must be positive (images per second) or None")
        self._encoder = encoder.eval()
        self._device = device or pick_device()
        self._encoder.to(self._device)
        self.spec, self.dim = encoder.spec, encoder.dim
        self.defenses = list(defenses)
        self.price_per_1k, self.default_budget = price_per_1k, budget
        self.rate_limit, self.max_batch = rate_limit, max_batch
        self._ledgers: dict[str, Ledger] = {}

    def _ledger(self, account: str) -> Ledger:
        if account not in self._ledgers:
            self._ledgers[account] = Ledger(budget=self.default_budget)
        return self._ledgers[account]

    def ledger(self, account: str) -> Ledger:
        """A copy of ``account``'s ledger (an empty one if it never queried)."""
        return replace(self._ledger(account))

    def ledgers(self) -> dict[str, Ledger]:
        return {name: replace(led) for name, led in self._ledgers.items()}

    def set_budget(self, account: str, budget: int | None) -> None:
        self._ledger(account).budget = budget

    def remaining(self, account: str) -> int | None:
        led = self._ledger(account)
        return None if led.budget is None else led.budget - led.images

    @torch.no_grad()
    def query(self, images: torch.Tensor, account: str = "default") -> torch.Tensor:
        """Features for ``images`` as seen by ``account``; each image counts as one query."""
        if not isinstance(account, str) or not account:
            raise InvalidQuery("account must be a non-empty string")
        images = validate_images(images, self.spec)
        if len(images) > self.max_batch:
            raise InvalidQuery(f"at most {self.max_batch} images per call; got {len(images)}, split the batch")
        led, n = self._ledger(account), len(images)
        if led.budget is not None and led.images + n > led.budget:
            raise QueryBudgetExceeded(
                f"account {account!r} has {led.budget - led.images} of {led.budget} queries left and sent {n};"
                " nothing was answered"
            )
        began = time.perf_counter()
        batch = images.to(self._device)
        with autocast(self._device):
            features = self._encoder(batch).float()
        for defense in self.defenses:
            features = defense(account, batch, features)
        led.compute_seconds += time.perf_counter() - began
        if self.rate_limit is not None:
            led.rate_limit_wait_seconds += n / self.rate_limit
        led.images += n
        led.calls += 1
        led.cost = led.images * self.price_per_1k / 1000
        return features.cpu()
