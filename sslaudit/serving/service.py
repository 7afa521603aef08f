"""The served model's logic, without HTTP: authenticate, rate-limit, reserve, answer, charge, replay.

One :class:`~sslaudit.api.SimulatedAPI` per distinct defence chain computes the answers (its defences,
per-account state and secret exactly as in process); the persistent :class:`LedgerDB` is the authority
on what every account was charged and holds the budgets. Every refusal is a :class:`ProtocolError`
carrying its HTTP status, so the HTTP layer only translates.

>>> service = InferenceService(victim, load_accounts("keys.toml"), LedgerDB("ledger.sqlite"))  # doctest: +SKIP
>>> body, length = service.infer(service.authenticate("Bearer sk-..."), raw_body, None)  # doctest: +SKIP
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

from sslaudit import __version__, registry
from sslaudit.api import InvalidQuery, QueryRefused, SimulatedAPI, UnsafeAnswer, validate_images
from sslaudit.secret import DeploymentSecret
from sslaudit.serving.accounts import Account, RateLimiter, find_account
from sslaudit.serving.defense_store import attach_defenses
from sslaudit.serving.ledger_db import BudgetExhausted, LedgerDB
from sslaudit.serving.protocol import (BUDGET_EXHAUSTED, REFUSED, ProtocolError, decode_infer_request,
                                       encode_tensors)
from sslaudit.victim import Victim

INPUT, OUTPUT = "images", "features"


class RateLimited(ProtocolError):
    """429: the account's token bucket is empty; ``retry_after`` seconds until this batch may go."""

    def __init__(self, retry_after: float, message: str) -> None:
        super().__init__(429, message)
        self.retry_after = retry_after


class InferenceService:
    """Serve ``victim`` to ``accounts`` under the Open Inference Protocol's model ``name``.

    ``build_defense`` turns a spec like ``"noise:sigma=0.1"`` into a defence (default: the registry's);
    ``calibration``: the provider's clean images, for defences that calibrate (B4B, detectors).
    """

    def __init__(self, victim: Victim, accounts: list[Account], ledger: LedgerDB, *, name: str = "",
                 secret: DeploymentSecret | None = None, price_per_1k: float = 1.0, max_batch: int = 1024,
                 build_defense: Callable[[str], object] | None = None,
                 calibration: torch.Tensor | None = None) -> None:
        self.victim, self.accounts, self.ledger = victim, accounts, ledger
        self.name = name or victim.name
        self.price_per_1k, self.max_batch = price_per_1k, max_batch
        self.spec = victim.encoder.spec
        self.limiter = RateLimiter()
        secret = secret or DeploymentSecret()
        chains = {a.defenses for a in accounts} | {()}
        build_defense = build_defense or (lambda spec: registry.build("defense", spec))
        self._apis = {chain: SimulatedAPI(victim.encoder, defenses=[build_defense(s) for s in chain], secret=secret,
                                          max_batch=max_batch, calibration=calibration if chain else None)
                      for chain in chains}
        for chain, api in self._apis.items():  # defence state survives restarts, as the charges do
            attach_defenses(api.defenses, ",".join(chain), ledger)

    def authenticate(self, authorization: str | None) -> Account:
        """The account of an ``Authorization: Bearer KEY`` header; 401 when missing or unknown."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ProtocolError(401, "send your API key as the header 'Authorization: Bearer KEY'")
        account = find_account(self.accounts, key.strip())
        if account is None:
            raise ProtocolError(401, "unknown API key; check the key your provider gave you")
        return account

    def check_model(self, model: str) -> None:
        if model != self.name:
            raise ProtocolError(404, f"unknown model {model!r}; this server serves {self.name!r} (GET /v2/models/"
                                     f"{self.name})")

    def server_metadata(self) -> dict:
        return {"name": "sslaudit", "version": __version__, "extensions": ["binary_tensor_data", "sslaudit_usage"]}

    def model_metadata(self) -> dict:
        spec, dim = self.spec, self._apis[()].dim
        return {"name": self.name, "versions": ["1"], "platform": "pytorch",
                "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, spec.channels, spec.size, spec.size]}],
                "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, dim]}],
                "parameters": {"value_range": [0.0, 1.0], "max_batch": self.max_batch,
                               "price_per_1k": self.price_per_1k, "method": self.victim.card.get("method", "")}}

    def usage(self, account: Account) -> dict:
        """What ``account`` was charged, its budget and what is left, and the size of its answers."""
        used = self.ledger.usage(account.name)
        return {"account": account.name, **used, "cost": used["images"] * self.price_per_1k / 1000,
                "budget": account.budget, "remaining": None if account.budget is None else account.budget - used["images"],
                "price_per_1k": self.price_per_1k, "dim": self._apis[account.defenses].dim}

    def infer(self, account: Account, body: bytes, header_length: int | None) -> tuple[bytes, int | None]:
        """Answer one infer request body for ``account``: the response body and its JSON header length."""
        request = decode_infer_request(body, header_length)
        if set(request.inputs) != {INPUT}:
            raise ProtocolError(400, f"send one input named {INPUT!r}; got {sorted(request.inputs)}")
        stored = self.ledger.replay(account.name, request.id)
        if stored is not None:  # already paid for under this id: the same answer, not charged again
            body, images = stored
            features = torch.frombuffer(bytearray(body), dtype=torch.float32).view(images, -1)
            return self._response(features, request.id, request.binary_output)
        try:
            images = validate_images(request.inputs[INPUT], self.spec)
        except InvalidQuery as err:
            raise ProtocolError(400, str(err)) from err
        n = len(images)
        if n > self.max_batch:
            raise ProtocolError(413, f"at most {self.max_batch} images per request; got {n}, split the batch")
        wait = self.limiter.take(account, n)
        if wait:
            raise RateLimited(wait, f"rate limit: {account.rate_limit:g} images/s with bursts of {account.burst}; "
                                    f"retry after {math.ceil(wait) if math.isfinite(wait) else 'never (batch > burst)'} s")
        try:
            token = self.ledger.reserve(account.name, n, budget=account.budget, request_id=request.id)
        except BudgetExhausted as err:
            raise ProtocolError(403, str(err), BUDGET_EXHAUSTED) from err
        began = time.perf_counter()
        try:
            features = self._apis[account.defenses].query(images, account.name)
        except QueryRefused as err:
            self.ledger.release(token)
            raise ProtocolError(403, f"refused: {err}", REFUSED) from err
        except UnsafeAnswer as err:
            self.ledger.release(token)
            raise ProtocolError(500, str(err)) from err
        except BaseException:
            self.ledger.release(token)
            raise
        features = features.float().contiguous()
        self.ledger.commit(token, features.numpy().tobytes(), seconds=time.perf_counter() - began)
        return self._response(features, request.id, request.binary_output)

    def _response(self, features: torch.Tensor, request_id: str | None, binary: bool) -> tuple[bytes, int | None]:
        extra = {"model_name": self.name, "model_version": "1", **({"id": request_id} if request_id else {})}
        return encode_tensors({OUTPUT: features}, binary=binary, extra=extra, key="outputs")
