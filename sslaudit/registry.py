"""Name → recipe registries for victims, attacks and defences.

Names resolve through plain dictionaries; the recipe modules are imported with
importlib on first lookup, never with ``eval``.

>>> from sslaudit.registry import get_attack
>>> get_attack("mse")  # doctest: +SKIP
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, TypeVar

T = TypeVar("T")

_REGISTRIES: dict[str, dict[str, object]] = {"victim": {}, "attack": {}, "defense": {}}
_PACKAGES = {
    "victim": "sslaudit.victims",
    "attack": "sslaudit.attacks",
    "defense": "sslaudit.defenses",
}


def _register(kind: str, name: str) -> Callable[[T], T]:
    def decorate(obj: T) -> T:
        table = _REGISTRIES[kind]
        if name in table and table[name] is not obj:
            raise ValueError(f"{kind} name {name!r} is registered twice")
        table[name] = obj
        return obj

    return decorate


def register_victim(name: str) -> Callable[[T], T]:
    """Register a victim recipe (a callable ``train(data, config) -> Victim``)."""
    return _register("victim", name)


def register_attack(name: str) -> Callable[[T], T]:
    """Register an attack recipe class (``run(api, pool, budget, seed)``)."""
    return _register("attack", name)


def register_defense(name: str) -> Callable[[T], T]:
    """Register a defence class (``__call__(account, images, features)``)."""
    return _register("defense", name)


def _load_all(kind: str) -> None:
    package = importlib.import_module(_PACKAGES[kind])
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module.name}")


def names(kind: str) -> list[str]:
    """All registered names of one kind (``victim``, ``attack``, ``defense``)."""
    _load_all(kind)
    return sorted(_REGISTRIES[kind])


def lookup(kind: str, name: str) -> object:
    """The recipe registered under ``name``; a clear error lists the choices."""
    _load_all(kind)
    table = _REGISTRIES[kind]
    if name not in table:
        choices = ", ".join(sorted(table)) or "none"
        raise KeyError(f"unknown {kind} {name!r}; choose one of: {choices}")
    return table[name]


def get_victim(name: str) -> object:
    return lookup("victim", name)


def get_attack(name: str) -> object:
    return lookup("attack", name)


def get_defense(name: str) -> object:
    return lookup("defense", name)
