"""The audit's results store: one SQLite row per finished cell, keyed by the cell's content address.

A cell is written once, when done, in one transaction (``INSERT OR IGNORE``): a killed audit loses
only the cells in flight, a rerun skips every key already stored, and two audits writing the same
store at once lose nothing (SQLite WAL, a busy timeout, and the first writer of a key wins).
:meth:`ResultStore.audit_document` gives the report's input (schema ``sslaudit.audit/1``).

>>> store = ResultStore("audit.sqlite")  # doctest: +SKIP
>>> store.put(key, cell.to_dict(), result.to_dict(), wall_seconds=12.0)  # doctest: +SKIP
>>> key in store.done_keys()  # doctest: +SKIP
True
"""
from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

AUDIT_SCHEMA = "sslaudit.audit/1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (key TEXT PRIMARY KEY, cell TEXT NOT NULL, result TEXT NOT NULL,
    wall_seconds REAL NOT NULL, finished TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _dumps(value: object) -> str:
    return json.dumps(value, allow_nan=True, sort_keys=True)


class ResultStore:
    """Finished cells of one or more audits in the SQLite file at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)

    def done_keys(self) -> set[str]:
        return {row[0] for row in self._conn.execute("SELECT key FROM cells")}

    def put(self, key: str, cell: dict, result: dict, *, wall_seconds: float) -> bool:
        """Store a finished cell; False if another writer stored this key first (its row is kept)."""
        finished = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        cursor = self._conn.execute("INSERT OR IGNORE INTO cells VALUES (?, ?, ?, ?, ?)",
                                    (key, _dumps(cell), _dumps(result), wall_seconds, finished))
        return cursor.rowcount == 1

    def set_meta(self, **values: object) -> None:
        """Audit-level facts for the report (name, config, price, machine), last writer wins."""
        self._conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                               [(k, _dumps(v)) for k, v in values.items()])

    def meta_once(self, name: str, value: object) -> object:
        """The stored ``name``, or ``value`` stored now if there is none (atomic: concurrent audits agree)."""
        self._conn.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (name, _dumps(value)))
        return json.loads(self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0])

    def meta(self) -> dict:
        return {name: json.loads(value) for name, value in self._conn.execute("SELECT name, value FROM meta")}

    def cells(self, keys: set[str] | None = None) -> list[dict]:
        """Stored cells in the order they finished: the cell's fields, ``key``, ``wall_seconds``, ``result``
        and, where the audit ran them, ``ownership`` (the verdicts' dicts)."""
        rows = self._conn.execute("SELECT key, cell, result, wall_seconds FROM cells ORDER BY finished, key")
        out = []
        for key, cell, result, wall in rows:
            if keys is None or key in keys:
                found = json.loads(result)
                verdicts = found.pop("ownership", None)  # the report reads them beside the result
                out.append({"key": key, **json.loads(cell), "wall_seconds": wall, "result": found,
                            **({"ownership": verdicts} if verdicts is not None else {})})
        return out

    def audit_document(self, keys: set[str] | None = None) -> dict:
        """The report's input: the stored meta and every cell (or those in ``keys``)."""
        meta = self.meta()
        return {"schema_version": AUDIT_SCHEMA, "name": meta.get("name", self.path.stem),
                "created": meta.get("created", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")),
                "price_per_1k": meta.get("price_per_1k", 1.0), "machine": meta.get("machine", {}),
                "config": meta.get("config", {}), "cells": self.cells(keys)}

    def close(self) -> None:
        self._conn.close()
