"""The JSON report of a stealing run, with its schema version; written atomically.

One result is written as its dict (``StealResult.to_dict``, which carries ``schema_version``); several
(a curve) as ``{"schema_version": ..., "curve": [...]}``. NaN and infinities (a gain recovered where
the victim equals the floor) are written as ``null``, so any JSON reader accepts the file.

>>> write_json("out.json", steal_curve(victim, attack, pool, [500, 5000], task))  # doctest: +SKIP
>>> from_json(Path("out.json").read_text())[0].queries.sent  # doctest: +SKIP
500
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

from sslaudit.report.terminal import as_results
from sslaudit.result import SCHEMA_VERSION, StealResult
from sslaudit.score_cache import write_atomically


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(results: StealResult | Mapping | Sequence[StealResult | Mapping], indent: int | None = 2) -> str:
    """One result as its dict, several as ``{"schema_version", "curve"}``; strict JSON (no NaN)."""
    single = isinstance(results, (StealResult, Mapping))
    dicts = [r.to_dict() for r in as_results(results)]
    payload = dicts[0] if single else {"schema_version": SCHEMA_VERSION, "curve": dicts}
    return json.dumps(_finite(payload), indent=indent, allow_nan=False)


def from_json(text: str) -> list[StealResult]:
    """The results in a text written by :func:`to_json` (one result or a curve)."""
    payload = json.loads(text)
    if isinstance(payload, dict) and "curve" in payload:
        version = payload.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ValueError(f"cannot read a {version!r} report; this sslaudit reads {SCHEMA_VERSION!r}")
        return [StealResult.from_dict(r) for r in payload["curve"]]
    return [StealResult.from_dict(payload)]


def write_json(path: str | Path, results: StealResult | Mapping | Sequence[StealResult | Mapping]) -> Path:
    """Write :func:`to_json` to ``path`` atomically (a temporary file beside it, then ``os.replace``)."""
    path = Path(path)
    write_atomically(path, to_json(results) + "\n")
    return path
