"""The typed, versioned result of one stealing run: what the audit returns and every renderer reads.

``to_dict()`` gives the plain JSON layout of reports and benchmark rows (victim, floor, stolen, queries,
defenses, task, run, the optional ``honest``, ``schema_version``); ``from_dict()`` reads it back, rows
written before a field existed included (those keys stay absent, so such a row round-trips unchanged).

>>> StealResult.from_dict(result.to_dict()) == result  # doctest: +SKIP
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Mapping

SCHEMA_VERSION = "sslaudit.steal/1"


def _without_none(out: dict, *keys: str) -> dict:
    """``out`` minus ``keys`` whose value is None (fields that rows written earlier do not have)."""
    return {k: v for k, v in out.items() if not (k in keys and v is None)}


class _Flat:
    """A dataclass whose dict is its fields in order; ``_optional`` keys may be absent (then None)."""

    _optional: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict:
        return _without_none({f.name: getattr(self, f.name) for f in fields(self)}, *self._optional)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        return cls(**{f.name: d.get(f.name) if f.name in cls._optional else d[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class EncoderScores(_Flat):
    """The fixed protocol's probe scores; ``linear_1pct_spread`` is the std over the few-label draws."""

    linear_1pct: float
    linear_1pct_spread: float | None  # None only in rows written before it was measured
    linear_full: float
    knn: float
    _optional: ClassVar[tuple[str, ...]] = ("linear_1pct_spread",)


@dataclass(frozen=True)
class Ratios(_Flat):
    """One ratio per metric (transfer ratio, gain recovered, honest utility); None where undefined."""

    linear_1pct: float | None
    linear_full: float | None
    knn: float | None


@dataclass(frozen=True)
class Fidelity(_Flat):
    """Mean cosine to the victim (None where the stolen space is not the victim's) and linear CKA."""

    cosine: float | None
    cka: float


@dataclass(frozen=True)
class VictimRow:
    """The victim's provenance and its scores measured directly on the encoder (not through the API)."""

    name: str
    method: str
    arch: str
    parameters: int
    scores: EncoderScores

    def to_dict(self) -> dict:
        return {"name": self.name, "method": self.method, "arch": self.arch, "parameters": self.parameters,
                **self.scores.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VictimRow":
        return cls(d["name"], d["method"], d["arch"], d["parameters"], EncoderScores.from_dict(d))


@dataclass(frozen=True)
class FloorRow:
    """A randomly initialised encoder of the stolen architecture, built with the run's seed."""

    arch: str
    scores: EncoderScores

    def to_dict(self) -> dict:
        return {"arch": self.arch, **self.scores.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FloorRow":
        return cls(d["arch"], EncoderScores.from_dict(d))


@dataclass(frozen=True)
class StolenRow:
    attack: str
    config: dict
    arch: str
    parameters: int
    scores: EncoderScores
    fidelity: Fidelity
    transfer_ratio: Ratios
    gain_recovered: Ratios
    train_seconds: float | None
    final_loss: float | None
    extra: dict | None = None  # None only in rows written before it existed

    def to_dict(self) -> dict:
        out = {"attack": self.attack, "config": copy.deepcopy(self.config), "arch": self.arch,
               "parameters": self.parameters, **self.scores.to_dict(), "fidelity": self.fidelity.to_dict(),
               "transfer_ratio": self.transfer_ratio.to_dict(), "gain_recovered": self.gain_recovered.to_dict(),
               "train_seconds": self.train_seconds, "final_loss": self.final_loss, "extra": copy.deepcopy(self.extra)}
        return _without_none(out, "extra")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StolenRow":
        return cls(d["attack"], copy.deepcopy(d["config"]), d["arch"], d["parameters"], EncoderScores.from_dict(d),
                   Fidelity.from_dict(d["fidelity"]), Ratios.from_dict(d["transfer_ratio"]),
                   Ratios.from_dict(d["gain_recovered"]), d.get("train_seconds"), d.get("final_loss"),
                   copy.deepcopy(d.get("extra")))


@dataclass(frozen=True)
class QueryAccount(_Flat):
    """The attack's queries: ``sent`` for this budget's prefix; ``account_total``, ``calls`` and
    ``charged`` are what the API's ledgers say over every account the attack used."""

    budget: int
    sent: int
    cost: float
    account_total: int | None  # None only in rows written before the API reported it
    calls: int
    charged: float | None  # likewise
    price_per_1k: float
    pool: str
    _optional: ClassVar[tuple[str, ...]] = ("account_total", "charged")


@dataclass(frozen=True)
class HonestScores:
    """An honest account's probe scores on features it bought through the (defended) API, what the
    ledger charged it, and ``utility`` = honest / victim direct score per metric (set by the audit)."""

    account: str
    scores: EncoderScores
    queries: int
    calls: int
    cost: float
    utility: Ratios | None = None

    def to_dict(self) -> dict:
        return _without_none({"account": self.account, **self.scores.to_dict(), "queries": self.queries,
                              "calls": self.calls, "cost": self.cost,
                              "utility": None if self.utility is None else self.utility.to_dict()}, "utility")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HonestScores":
        utility = None if d.get("utility") is None else Ratios.from_dict(d["utility"])
        return cls(d["account"], EncoderScores.from_dict(d), d["queries"], d["calls"], d["cost"], utility)


@dataclass(frozen=True)
class StealResult:
    """One budget of one stealing run: victim, random-init floor, stolen encoder, queries, provenance."""

    victim: VictimRow
    floor: FloorRow
    stolen: StolenRow
    queries: QueryAccount
    defenses: list[dict]
    task: str
    run: dict
    honest: HonestScores | None = None
    schema_version: str = SCHEMA_VERSION

    def to_dict(self) -> dict:
        out = {"victim": self.victim.to_dict(), "floor": self.floor.to_dict(), "stolen": self.stolen.to_dict(),
               "queries": self.queries.to_dict(), "defenses": copy.deepcopy(self.defenses), "task": self.task,
               "run": copy.deepcopy(self.run), "honest": None if self.honest is None else self.honest.to_dict(),
               "schema_version": self.schema_version}
        return _without_none(out, "honest")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StealResult":
        """Read a result dict; one without ``schema_version`` (written before it existed) is read as version 1."""
        version = d.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ValueError(f"cannot read a {version!r} result; this sslaudit reads {SCHEMA_VERSION!r}")
        honest = None if d.get("honest") is None else HonestScores.from_dict(d["honest"])
        return cls(VictimRow.from_dict(d["victim"]), FloorRow.from_dict(d["floor"]), StolenRow.from_dict(d["stolen"]),
                   QueryAccount.from_dict(d["queries"]), copy.deepcopy(list(d["defenses"])), d["task"],
                   copy.deepcopy(dict(d["run"])), honest, version)
