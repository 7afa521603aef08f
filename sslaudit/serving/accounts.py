"""API keys, budgets, rate limits and defences per account, from a TOML keys file.

Keys are stored as SHA-256 hex digests (``key_sha256``), compared in constant time; ``sslaudit serve
--new-key NAME`` prints a fresh key and the line to paste. ``[defaults]`` applies to every account and
each ``[accounts.NAME]`` table overrides it. ``rate_limit`` is images per second with a burst of
``burst`` images (a token bucket on the server's clock); ``budget`` is images in all (omit: unlimited).

    [defaults]
    rate_limit = 500
    burst = 2000
    defenses = ["noise:sigma=0.1"]

    [accounts.alice]
    key_sha256 = "2bd8..."
    budget = 50000

>>> acct = Account("alice", hash_key("k"), budget=10)
>>> find_account([acct], "k").name, find_account([acct], "nope")
('alice', None)
"""
from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sslaudit.tomlfile import read_toml

ALLOWED = {"key_sha256", "budget", "rate_limit", "burst", "defenses"}


class BadKeysFile(ValueError):
    """The keys file cannot be used; the message names the file, the account and what to fix."""


def hash_key(key: str) -> str:
    """The SHA-256 hex digest stored in the keys file for ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random API key (32 bytes, URL-safe)."""
    return "sk-" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Account:
    """One API account: its name, key digest, budget (images, None: unlimited), rate limit, defences."""

    name: str
    key_sha256: str
    budget: int | None = None
    rate_limit: float | None = None
    burst: int | None = None
    defenses: tuple[str, ...] = ()


def _setting(path: Path, where: str, table: dict, name: str, kind: type, minimum: float) -> object:
    value = table.get(name)
    if value is None:
        return None
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value) and value >= minimum
    if not ok:
        raise BadKeysFile(f"{path}: {where}.{name} must be a {kind.__name__} >= {minimum:g}; got {value!r}")
    return value


def load_accounts(path: str | Path) -> list[Account]:
    """The accounts of the keys file at ``path`` (:class:`BadKeysFile` with a one-line reason otherwise)."""
    path = Path(path)
    doc = read_toml(path, BadKeysFile, "create one with `sslaudit serve --new-key NAME > keys.toml`")
    defaults, tables = doc.get("defaults", {}), doc.get("accounts", {})
    if not isinstance(tables, dict) or not tables:
        raise BadKeysFile(f"{path} has no [accounts.NAME] tables; add one with a key_sha256")
    accounts, digests = [], set()
    for name, table in tables.items():
        where = f"accounts.{name}"
        if not isinstance(table, dict):
            raise BadKeysFile(f"{path}: {where} must be a table")
        unknown = set(table) - ALLOWED
        if unknown:
            raise BadKeysFile(f"{path}: {where} has unknown settings {sorted(unknown)}; allowed: {sorted(ALLOWED)}")
        merged = {**defaults, **table}
        digest = merged.get("key_sha256")
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise BadKeysFile(f"{path}: {where}.key_sha256 must be 64 lowercase hex digits "
                              "(`sslaudit serve --new-key NAME` prints one)")
        if digest in digests:
            raise BadKeysFile(f"{path}: {where} shares its key with another account; give each its own")
        digests.add(digest)
        defenses = merged.get("defenses", [])
        if not isinstance(defenses, list) or not all(isinstance(d, str) for d in defenses):
            raise BadKeysFile(f"{path}: {where}.defenses must be a list of strings like \"noise:sigma=0.1\"")
        accounts.append(Account(
            name, digest, budget=_setting(path, where, merged, "budget", int, 0),
            rate_limit=_setting(path, where, merged, "rate_limit", (int, float), 0),  # type: ignore[arg-type]
            burst=_setting(path, where, merged, "burst", int, 1), defenses=tuple(defenses)))
    return accounts


def find_account(accounts: list[Account], key: str) -> Account | None:
    """The account whose key is ``key``, compared in constant time against every digest."""
    digest, found = hash_key(key), None
    for account in accounts:
        if hmac.compare_digest(account.key_sha256, digest):
            found = account
    return found


@dataclass
class RateLimiter:
    """Token buckets per account: ``rate`` images per second, at most ``burst`` saved up."""

    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, account: Account, images: int, now: float | None = None) -> float:
        """0 if ``images`` may go now (and takes them), else the seconds to wait before retrying."""
        if account.rate_limit is None:
            return 0.0
        rate = float(account.rate_limit)
        burst = float(account.burst or max(rate, 1.0))
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(account.name, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            if images > tokens:
                self._buckets[account.name] = (tokens, now)
                return math.inf if images > burst or rate == 0 else (images - tokens) / rate
            self._buckets[account.name] = (tokens - images, now)
            return 0.0
