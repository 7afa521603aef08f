"""An audit grid from TOML: victims × defences × attacks × budgets × seeds, every name checked first.

Each entry uses the CLI's ``name:key=value`` syntax and is resolved through the registry before
anything runs, so a typo is one line naming the field. A defence entry is ``"none"``, one spec, or a
list of specs served as a chain. ``sslaudit audit --example`` prints :data:`EXAMPLE`.

>>> config = parse_config(tomllib.loads(EXAMPLE))
>>> len(config.cells()), config.cells()[0].defense
(72, 'none')
"""
from __future__ import annotations

import tomllib  # noqa: F401 - the doctest parses the example with it
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sslaudit import registry
from sslaudit.tomlfile import read_toml

EXAMPLE = """\
# sslaudit audit --config audit.toml: every combination below is one cell, stored when done.
[audit]
name = "tiny victims, three defences, three attacks"
victims = ["simclr", "barlow_twins"]         # recipe names (tiny preset) or saved .safetensors victims
defenses = ["none", "noise:sigma=0.5", "b4b"]  # "none", one spec, or a list of specs served as a chain
attacks = ["mse", "stolenencoder", "contsteal"]
budgets = [500, 5000]                         # queries the attacker buys
seeds = [0, 1]
# pool = "fashion-mnist"                      # the attacker's unlabelled images
# price_per_1k = 1.0                          # dollars per 1,000 queries, for the report's costs
# epochs = 10                                 # override every attack's epochs (quick audits)
# eval_train = 2000                           # probe on fewer labels (quick audits; default: all 60,000)
# eval_test = 1000
# ownership = false                           # also run dataset inference on every stolen encoder (p-values)
# workers = 1                                 # local processes running cells at once
# store = "audit.sqlite"                      # default: the cache directory's audits/NAME.sqlite
"""
KNOWN = {"name", "victims", "defenses", "attacks", "budgets", "seeds", "pool", "price_per_1k", "epochs",
         "eval_train", "eval_test", "workers", "store", "ownership"}


class BadAuditConfig(ValueError):
    """The audit config cannot run; the message names the field and what to write."""


@dataclass(frozen=True)
class Cell:
    """One run of the grid: everything that decides its result (with the victim's weights, its key)."""

    victim: str
    defense: str  # "none", or specs joined by " + "
    attack: str
    budget: int
    seed: int
    pool: str = "fashion-mnist"
    price_per_1k: float = 1.0
    epochs: int | None = None
    eval_train: int | None = None
    eval_test: int | None = None
    ownership: bool = False  # dataset inference (and the watermark test, if the victim has one) on the copy

    @property
    def defenses(self) -> list[str]:
        return [] if self.defense == "none" else self.defense.split(" + ")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AuditConfig:
    name: str
    victims: list[str]
    defenses: list[str]
    attacks: list[str]
    budgets: list[int]
    seeds: list[int]
    pool: str = "fashion-mnist"
    price_per_1k: float = 1.0
    epochs: int | None = None
    eval_train: int | None = None
    eval_test: int | None = None
    workers: int = 1
    store: str | None = None
    ownership: bool = False
    raw: dict = field(default_factory=dict, compare=False)

    def cells(self) -> list[Cell]:
        """Every cell, victims outermost and seeds innermost (the order they run in)."""
        return [Cell(v, d, a, b, s, self.pool, self.price_per_1k, self.epochs, self.eval_train, self.eval_test,
                     self.ownership)
                for v in self.victims for d in self.defenses for a in self.attacks for b in self.budgets
                for s in self.seeds]


def _list(table: dict, name: str, kind: type, required: bool = True) -> list:
    value = table.get(name)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not value or not all(isinstance(v, kind) and not isinstance(v, bool)
                                                           for v in value):
        raise BadAuditConfig(f"[audit] {name} must be a non-empty list of {kind.__name__}s, e.g. "
                             f"{name} = {['mse'] if kind is str else [0]}")
    return value


def _optional(table: dict, name: str, kind: type | tuple, minimum: float) -> object:
    value = table.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, kind) or value < minimum):
        raise BadAuditConfig(f"[audit] {name} must be a number >= {minimum:g}; got {value!r}")
    return value


def _flag(table: dict, name: str) -> bool:
    value = table.get(name, False)
    if not isinstance(value, bool):
        raise BadAuditConfig(f"[audit] {name} must be true or false; got {value!r}")
    return value


def _check(kind: str, spec: str, where: str) -> str:
    try:
        registry.build(kind, spec)
    except (KeyError, ValueError) as err:
        text = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise BadAuditConfig(f"[audit] {where}: {' '.join(str(text).split())}") from err
    return spec


def _defense(entry: object) -> str:
    specs = entry if isinstance(entry, list) else [entry]
    if not specs or not all(isinstance(s, str) and s for s in specs):
        raise BadAuditConfig(f"[audit] defenses: each entry is \"none\", a spec or a list of specs; got {entry!r}")
    if specs == ["none"]:
        return "none"
    return " + ".join(_check("defense", s, "defenses") for s in specs)


def parse_config(doc: dict) -> AuditConfig:
    """The :class:`AuditConfig` of a parsed TOML document (:class:`BadAuditConfig` on any mistake)."""
    table = doc.get("audit")
    if not isinstance(table, dict):
        raise BadAuditConfig("the config needs an [audit] table; `sslaudit audit --example` prints one")
    unknown = set(table) - KNOWN
    if unknown:
        raise BadAuditConfig(f"[audit] has unknown keys {sorted(unknown)}; known: {sorted(KNOWN)}")
    budgets, seeds = _list(table, "budgets", int), _list(table, "seeds", int)
    if min(budgets) < 1 or min(seeds) < 0:
        raise BadAuditConfig("[audit] budgets must be >= 1 and seeds >= 0")
    pool = table.get("pool", "fashion-mnist")
    if pool not in registry.names("pool"):
        raise BadAuditConfig(f"[audit] pool must be one of {', '.join(registry.names('pool'))}; got {pool!r}")
    defenses = table.get("defenses", ["none"])
    if not isinstance(defenses, list) or not defenses:
        raise BadAuditConfig("[audit] defenses must be a non-empty list, e.g. defenses = [\"none\", \"b4b\"]")
    return AuditConfig(
        name=str(table.get("name", "audit")), victims=_list(table, "victims", str),
        defenses=[_defense(d) for d in defenses],
        attacks=[_check("attack", a, "attacks") for a in _list(table, "attacks", str)],
        budgets=sorted(set(budgets)), seeds=sorted(set(seeds)), pool=pool,
        price_per_1k=float(_optional(table, "price_per_1k", (int, float), 0) if "price_per_1k" in table else 1.0),
        epochs=_optional(table, "epochs", int, 1), eval_train=_optional(table, "eval_train", int, 100),
        eval_test=_optional(table, "eval_test", int, 100), workers=int(_optional(table, "workers", int, 1) or 1),
        store=table.get("store"), ownership=_flag(table, "ownership"), raw=doc)


def load_config(path: str | Path) -> AuditConfig:
    """Read and check the audit config at ``path``."""
    return parse_config(read_toml(path, BadAuditConfig, f"`sslaudit audit --example > {path}` writes one"))
