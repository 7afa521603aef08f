"""Name → recipe registries for victims, attacks, defences, architectures and query pools.

Names resolve through plain dictionaries; the recipe modules are imported with
importlib on first lookup, never with ``eval``. One class may be registered
under several names, each with a *variant* (fixed constructor arguments), and
:func:`build` turns ``"name:key=value,..."`` into a configured instance.

>>> @register_attack("mse", loss="mse")
... @register_attack("infonce", loss="infonce")
... @dataclass(kw_only=True)
... class DirectExtraction: ...  # doctest: +SKIP
>>> build("attack", "mse:standardize=true")  # DirectExtraction(loss="mse", standardize=True)  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import math
import pkgutil
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

T = TypeVar("T")

KINDS = ("victim", "attack", "defense", "arch", "pool")
_PACKAGES = {"victim": "sslaudit.victims", "attack": "sslaudit.attacks", "defense": "sslaudit.defenses"}


@dataclass(frozen=True)
class Entry:
    """What a name stands for: a class or factory, and the arguments its variant fixes."""

    obj: Any
    variant: dict[str, Any] = field(default_factory=dict)


class OptionError(ValueError):
    """A component spec that cannot be built; the message is one line that says what to change."""


_REGISTRIES: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}


def _register(kind: str, name: str, variant: dict[str, Any]) -> Callable[[T], T]:
    def decorate(obj: T) -> T:
        table, entry = _REGISTRIES[kind], Entry(obj, dict(variant))
        if name in table and table[name] != entry:
            raise ValueError(f"{kind} name {name!r} is registered twice")
        table[name] = entry
        return obj

    return decorate


def register_victim(name: str, **variant: Any) -> Callable[[T], T]:
    """Register a victim recipe (``train(data, config) -> Victim``); stackable, ``variant`` fixes arguments."""
    return _register("victim", name, variant)


def register_attack(name: str, **variant: Any) -> Callable[[T], T]:
    """Register an attack class (``run(api, pool, budget, seed)``) under ``name`` with fixed ``variant`` fields."""
    return _register("attack", name, variant)


def register_defense(name: str, **variant: Any) -> Callable[[T], T]:
    """Register a defence class (``__call__(account, images, features)``) with fixed ``variant`` fields."""
    return _register("defense", name, variant)


def _load_all(kind: str) -> None:
    if kind not in _REGISTRIES:
        raise KeyError(f"unknown kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if kind == "arch":
        from sslaudit.models import BACKBONES

        for name, factory in BACKBONES.items():
            _REGISTRIES[kind].setdefault(name, Entry(factory))
        return
    if kind == "pool":
        from sslaudit.tasks import attack_pool

        for name in ("fashion-mnist", "digits"):
            _REGISTRIES[kind].setdefault(name, Entry(attack_pool, {"name": name}))
        return
    package = importlib.import_module(_PACKAGES[kind])
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module.name}")


def names(kind: str) -> list[str]:
    """All registered names of one kind (``victim``, ``attack``, ``defense``, ``arch``, ``pool``)."""
    _load_all(kind)
    return sorted(_REGISTRIES[kind])


def lookup_entry(kind: str, name: str) -> Entry:
    """The :class:`Entry` registered under ``name``; a clear ``KeyError`` lists the choices."""
    _load_all(kind)
    table = _REGISTRIES[kind]
    if name not in table:
        choices = ", ".join(sorted(table)) or "none"
        raise KeyError(f"unknown {kind} {name!r}; choose one of: {choices}")
    return table[name]


def lookup(kind: str, name: str) -> Any:
    """The recipe under ``name``: the object itself, or ``partial(obj, **variant)`` for a variant."""
    entry = lookup_entry(kind, name)
    return functools.partial(entry.obj, **entry.variant) if entry.variant else entry.obj


def get_victim(name: str) -> Any:
    return lookup("victim", name)


def get_attack(name: str) -> Any:
    return lookup("attack", name)


def get_defense(name: str) -> Any:
    return lookup("defense", name)


def split_component(text: str) -> tuple[str, dict[str, str]]:
    """``"noise:sigma=0.2,relative=false"`` → ``("noise", {"sigma": "0.2", "relative": "false"})``."""
    name, _, rest = text.partition(":")
    options: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"expected key=value in {text!r}, got {item!r}")
        options[key.strip()] = raw.strip()
    return name.strip(), options


def parse_component(text: str) -> tuple[str, dict[str, Any]]:
    """``"noise:sigma=0.2,relative=false"`` → ``("noise", {"sigma": 0.2, "relative": False})`` (types guessed)."""
    name, raw = split_component(text)
    return name, {key: _parse_value(value) for key, value in raw.items()}


def _parse_value(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def build(kind: str, spec: str, /, **overrides: Any) -> Any:
    """``build("defense", "noise:sigma=0.2")`` → ``obj(**variant, **options, **overrides)``.

    Text values are converted to the annotated type of the field they set
    (bool, int, float, str, optional or ``Literal`` of those); ``overrides``
    are Python values (e.g. a ``TrainConfig``). Every mistake is one
    :class:`OptionError` line naming the key; an unknown name is a ``KeyError``.
    """
    name, raw = split_component(spec)
    entry = lookup_entry(kind, name)
    label = f"{kind} {name!r}"
    accepted = _accepted(entry)
    options: dict[str, Any] = {}
    for key, text in raw.items():
        if key in entry.variant:
            raise OptionError(f"{label} fixes {key}={entry.variant[key]!r}; choose the name registered for the "
                              f"{key} you want (see `sslaudit list`)")
        options[key] = _parse_value(text) if accepted is None else _convert(label, key, text, accepted)
    unknown = sorted(overrides.keys() - accepted.keys()) if accepted is not None else []
    if unknown:
        raise OptionError(_unknown(label, unknown[0], accepted))
    try:
        return entry.obj(**entry.variant, **{**options, **overrides})
    except (TypeError, ValueError) as err:
        raise OptionError(f"{label}: {' '.join(str(err).split())}") from err


def _convert(label: str, key: str, text: str, accepted: dict[str, Any]) -> Any:
    if key not in accepted:
        raise OptionError(_unknown(label, key, accepted))
    try:
        return _coerce(text, accepted[key])
    except _Mismatch as err:
        raise OptionError(f"{label}: {key} expects {err.args[0]}, got {text!r}") from None


def _unknown(label: str, key: str, accepted: dict[str, Any]) -> str:
    keys = ", ".join(sorted(accepted)) or "none"
    return f"{label} has no option {key!r}; accepted keys: {keys}"


def _target(obj: Any) -> Any:
    """The class whose fields a factory takes: ``obj`` itself, or a ``**kwargs`` factory's returned dataclass."""
    if isinstance(obj, type):
        return obj
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        return obj
    if len(params) != 1 or params[0].kind is not params[0].VAR_KEYWORD:
        return obj
    returned = _hints(obj).get("return")
    return returned if isinstance(returned, type) and dataclasses.is_dataclass(returned) else obj


def _accepted(entry: Entry) -> dict[str, Any] | None:
    """Settable keys → annotation (``None``: unannotated); ``None`` when they cannot be known."""
    target = _target(entry.obj)
    hints = _hints(target)
    if dataclasses.is_dataclass(target):
        keys = [f.name for f in dataclasses.fields(target) if f.init]
    else:
        try:
            params = inspect.signature(target).parameters.values()
        except (TypeError, ValueError):
            return None
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        keys = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return {k: hints.get(k) for k in keys if not k.startswith("_") and k not in entry.variant}


def _hints(obj: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj.__init__ if isinstance(obj, type) and not dataclasses.is_dataclass(obj)
                                     else obj)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to guessing value types
        return {}


class _Mismatch(Exception):
    """``args[0]`` describes the expected type."""


_DESCRIBE = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "none"}


def _coerce(text: str, hint: Any) -> Any:
    """``text`` as a value of type ``hint``; raises :class:`_Mismatch` describing the type otherwise."""
    if hint is None or hint is Any:
        return _parse_value(text)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in sorted(typing.get_args(hint), key=lambda a: a is not type(None)):  # "none" means None first
            try:
                return _coerce(text, arg)
            except _Mismatch:
                pass
        raise _Mismatch(" or ".join(_describe(arg) for arg in typing.get_args(hint)))
    if origin is typing.Literal:
        for choice in typing.get_args(hint):
            if str(choice) == text:
                return choice
        raise _Mismatch(_describe(hint))
    if hint is type(None) and text.lower() in ("none", "null"):
        return None
    if hint is bool and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if hint is str:
        return text
    if hint in (int, float):
        try:
            value = hint(text)
        except ValueError:
            raise _Mismatch(_describe(hint)) from None
        if not math.isnan(value):
            return value
    raise _Mismatch(_describe(hint))


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(str(c) for c in typing.get_args(hint))
    name = getattr(hint, "__name__", str(hint))
    return _DESCRIBE.get(hint, f"{name} (not settable from text)")
