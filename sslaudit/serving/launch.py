"""Put a victim behind the Open Inference Protocol: files beside the keys, one server per ledger.

Beside ``keys.toml`` the server keeps ``keys.ledger.sqlite`` (what every account was charged, and the
answers it may fetch again) and ``keys.secret`` (the deployment secret that keys per-account defences,
created once with mode 0600, so transforms and watermarks stay the same across restarts;
``$SSLAUDIT_SECRET`` overrides it). ``keys.lock`` stops a second server from sharing the ledger, whose
pending reservations a starting server releases.

>>> service = open_service("simclr", "keys.toml")  # doctest: +SKIP
>>> serve(service, port=8000)  # doctest: +SKIP
"""
from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path
from typing import IO

from sslaudit.secret import ENV_VAR, DeploymentSecret
from sslaudit.serving.accounts import load_accounts
from sslaudit.serving.ledger_db import LedgerDB
from sslaudit.serving.service import InferenceService

_LOCKS: list[IO] = []  # held for the life of the process


class LedgerInUse(RuntimeError):
    """Another server already serves this ledger."""


def beside(keys: Path, suffix: str) -> Path:
    return keys.with_name(keys.stem + suffix)


def deployment_secret(keys: Path) -> DeploymentSecret:
    """``$SSLAUDIT_SECRET`` if set, else the secret file beside ``keys`` (created on first use)."""
    if os.environ.get(ENV_VAR):
        return DeploymentSecret.from_env()
    path = beside(keys, ".secret")
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(os.urandom(32).hex())
    return DeploymentSecret.from_hex(path.read_text())


def lock_ledger(keys: Path) -> None:
    """Hold ``keys.lock`` exclusively, or :class:`LedgerInUse`."""
    handle = open(beside(keys, ".lock"), "w")  # noqa: SIM115 - kept open while the server runs
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        handle.close()
        raise LedgerInUse(f"another sslaudit server is using {beside(keys, '.ledger.sqlite')}; stop it first") from err
    _LOCKS.append(handle)


def open_service(victim_spec: str, keys: str | Path, *, preset: str = "tiny", name: str = "",
                 price_per_1k: float = 1.0, max_batch: int = 1024) -> InferenceService:
    """Load the victim and the accounts, lock and open the ledger: a service ready for :func:`serve`."""
    from sslaudit import registry
    from sslaudit.zoo import resolve_victim

    keys = Path(keys)
    accounts = load_accounts(keys)
    for account in accounts:  # every defence spec checked before anything is loaded
        for spec in account.defenses:
            registry.build("defense", spec)
    lock_ledger(keys)
    victim = resolve_victim(victim_spec, preset)
    calibration = None
    if any(a.defenses for a in accounts):
        from sslaudit.audit import provider_sample
        from sslaudit.tasks import downstream_task

        calibration = provider_sample(downstream_task())
    name = name or re.sub(r"[^A-Za-z0-9_.-]", "-", Path(victim_spec).stem)  # "simclr" → /v2/models/simclr
    return InferenceService(victim, accounts, LedgerDB(beside(keys, ".ledger.sqlite")), name=name,
                            secret=deployment_secret(keys), price_per_1k=price_per_1k, max_batch=max_batch,
                            calibration=calibration)


def serve(service: InferenceService, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the OIP v2 app with uvicorn until interrupted."""
    import uvicorn

    from sslaudit.serving.http import create_app

    uvicorn.run(create_app(service), host=host, port=port, log_level="warning")
