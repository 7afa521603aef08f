"""Attach every served defence's per-account state to the ledger database, so a restart keeps it.

Each :class:`~defenses.common.PerAccount` inside a defence (found by walking the defence's attributes,
e.g. B4B's coverage table inside its ``BucketCoverage``) is named by the chain, the defence's place in
it and the attribute path, and persisted through :mod:`sslaudit.serving.state_codec`; maps recomputable
from the secret (``derived``) are left in memory.

>>> attach_defenses(api.defenses, "noise:sigma=0.1", ledger)  # doctest: +SKIP
"""
from __future__ import annotations

from typing import Sequence

from sslaudit.defenses.common import PerAccount
from sslaudit.serving.ledger_db import LedgerDB
from sslaudit.serving.state_codec import encode, restore


def _state_maps(obj: object, path: str, depth: int = 0) -> list[tuple[str, PerAccount]]:
    found: list[tuple[str, PerAccount]] = []
    for name, value in vars(obj).items() if hasattr(obj, "__dict__") else ():
        if isinstance(value, PerAccount):
            found.append((f"{path}.{name}", value))
        elif depth < 3 and type(value).__module__.startswith("sslaudit.") and hasattr(value, "__dict__"):
            found += _state_maps(value, f"{path}.{name}", depth + 1)
    return found


def attach_defenses(defenses: Sequence[object], chain: str, ledger: LedgerDB) -> int:
    """Persist the per-account state of ``defenses`` (served as the chain named ``chain``); how many maps."""
    count = 0
    for index, defense in enumerate(defenses):
        for path, states in _state_maps(defense, f"{chain}#{index}:{type(defense).__name__}"):
            if states.derived:
                continue

            def load(account: str, fresh: object, path: str = path) -> object | None:
                stored = ledger.load_state(path, account)
                return None if stored is None else restore(fresh, *stored)

            def save(account: str, state: object, path: str = path) -> None:
                ledger.save_state(path, account, *encode(state))

            states.persist(load, save)
            count += 1
    return count
