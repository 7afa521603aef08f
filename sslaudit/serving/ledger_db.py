"""The served API's ledger in SQLite (WAL): budgets hold across threads, processes and restarts.

It also keeps each defence's per-account state (:meth:`save_state`), so B4B's coverage and the
detectors' memories survive a restart as the charges do.

A request is charged in two steps. :meth:`LedgerDB.reserve` checks the budget and records the images
as *pending* in one ``BEGIN IMMEDIATE`` transaction, before any computing, so concurrent requests can
never overrun a budget. :meth:`LedgerDB.commit` turns the reservation into a charge and stores the
answer under the client's request id, once the answer exists and before it is sent. A failed request
is :meth:`release`-d; a restart releases every reservation left pending by a killed server (nothing was
answered for them). A client that retries a request id it already paid for gets the stored answer
(:meth:`replay`) and is not charged again: with idempotent request ids, a request is charged exactly
once even when the server dies between answering and sending.

>>> db = LedgerDB(":memory:")
>>> token = db.reserve("alice", 8, budget=10, request_id="r1")
>>> db.commit(token, b"answer", seconds=0.01)
>>> db.usage("alice")["images"], db.replay("alice", "r1")
(8, (b'answer', 8))
"""
from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (account TEXT PRIMARY KEY, images INTEGER NOT NULL DEFAULT 0,
    calls INTEGER NOT NULL DEFAULT 0, compute_seconds REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS pending (token TEXT PRIMARY KEY, account TEXT NOT NULL, images INTEGER NOT NULL,
    request_id TEXT, started REAL NOT NULL);
CREATE TABLE IF NOT EXISTS defense_state (name TEXT NOT NULL, account TEXT NOT NULL, structure TEXT NOT NULL,
    tensors BLOB NOT NULL, PRIMARY KEY (name, account));
CREATE TABLE IF NOT EXISTS answers (account TEXT NOT NULL, request_id TEXT NOT NULL, images INTEGER NOT NULL,
    body BLOB NOT NULL, created REAL NOT NULL, PRIMARY KEY (account, request_id));
"""
REPLAY_SECONDS = 24 * 3600  # how long a paid answer can be fetched again under its request id
PRUNE_EVERY = 1000  # charges between two sweeps of expired answers


class BudgetExhausted(RuntimeError):
    """The account's budget does not cover this request; nothing was reserved."""


class LedgerDB:
    """Per-account images, calls and compute seconds; pending reservations; paid answers for replay."""

    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        self.path = str(path)
        self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()  # one connection, used by one thread at a time
        self._commits = 0
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # a committed charge survives a power cut
            self._conn.executescript(SCHEMA)
            self._conn.execute("DELETE FROM pending")  # a killed server answered none of these
            self._conn.execute("DELETE FROM answers WHERE created < ?", (time.time() - REPLAY_SECONDS,))

    def _transaction(self, work):  # noqa: ANN001, ANN202 - a callable run inside BEGIN IMMEDIATE
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")  # the write lock first: check-and-reserve is atomic
            try:
                result = work(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

    def reserve(self, account: str, images: int, *, budget: int | None, request_id: str | None = None) -> str:
        """Hold ``images`` against ``account``'s ``budget`` (None: unlimited); a token for commit/release."""
        token = uuid.uuid4().hex

        def work(conn: sqlite3.Connection) -> None:
            if budget is not None:
                used = conn.execute("SELECT COALESCE((SELECT images FROM usage WHERE account = ?), 0) + "
                                    "COALESCE((SELECT SUM(images) FROM pending WHERE account = ?), 0)",
                                    (account, account)).fetchone()[0]
                if used + images > budget:
                    raise BudgetExhausted(f"account {account!r} has {max(budget - used, 0)} of {budget} queries "
                                          f"left and sent {images}; nothing was answered or charged")
            conn.execute("INSERT INTO pending VALUES (?, ?, ?, ?, ?)", (token, account, images, request_id,
                                                                        time.time()))
        self._transaction(work)
        return token

    def commit(self, token: str, body: bytes, *, seconds: float) -> None:
        """Charge the reservation ``token`` and keep its answer ``body`` for replay under its request id."""
        def work(conn: sqlite3.Connection) -> None:
            row = conn.execute("DELETE FROM pending WHERE token = ? RETURNING account, images, request_id",
                               (token,)).fetchone()
            if row is None:
                raise KeyError(f"no pending reservation {token}")
            account, images, request_id = row
            conn.execute("INSERT INTO usage (account, images, calls, compute_seconds) VALUES (?, ?, 1, ?) "
                         "ON CONFLICT(account) DO UPDATE SET images = images + excluded.images, "
                         "calls = calls + 1, compute_seconds = compute_seconds + excluded.compute_seconds",
                         (account, images, seconds))
            if request_id is not None:
                conn.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                             (account, request_id, images, body, time.time()))
            self._commits += 1
            if self._commits % PRUNE_EVERY == 0:  # a long-running server does not keep answers forever
                conn.execute("DELETE FROM answers WHERE created < ?", (time.time() - REPLAY_SECONDS,))
        self._transaction(work)

    def release(self, token: str) -> None:
        """Drop the reservation ``token`` (the request failed; nothing left the server)."""
        self._transaction(lambda conn: conn.execute("DELETE FROM pending WHERE token = ?", (token,)))

    def replay(self, account: str, request_id: str | None) -> tuple[bytes, int] | None:
        """The stored answer ``account`` already paid for under ``request_id`` and its image count, if any."""
        if request_id is None:
            return None
        with self._lock:
            row = self._conn.execute("SELECT body, images FROM answers WHERE account = ? AND request_id = ?",
                                     (account, request_id)).fetchone()
        return None if row is None else (bytes(row[0]), row[1])

    def save_state(self, name: str, account: str, structure: str, tensors: bytes) -> None:
        """Store defence ``name``'s state for ``account`` (see :mod:`sslaudit.serving.state_codec`)."""
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO defense_state VALUES (?, ?, ?, ?)",
                               (name, account, structure, tensors))

    def load_state(self, name: str, account: str) -> tuple[str, bytes] | None:
        """The stored (structure, tensors) of defence ``name`` for ``account``, if any."""
        with self._lock:
            row = self._conn.execute("SELECT structure, tensors FROM defense_state WHERE name = ? AND account = ?",
                                     (name, account)).fetchone()
        return None if row is None else (row[0], bytes(row[1]))

    def usage(self, account: str) -> dict[str, float]:
        """``images``, ``calls`` and ``compute_seconds`` charged to ``account`` (zeros if never charged)."""
        with self._lock:
            row = self._conn.execute("SELECT images, calls, compute_seconds FROM usage WHERE account = ?",
                                     (account,)).fetchone()
        images, calls, seconds = row or (0, 0, 0.0)
        return {"images": images, "calls": calls, "compute_seconds": seconds}

    def accounts(self) -> list[str]:
        """Every account that was ever charged."""
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT account FROM usage ORDER BY account")]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
