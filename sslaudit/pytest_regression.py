"""Stored-value regression checks behind the ``sslaudit_regression`` fixture (:mod:`sslaudit.pytest_plugin`).

pytest-regressions' layout: the values of ``tests/test_x.py::test_name`` live in
``tests/test_x/test_name.json``, one section per check name (sorted keys, so diffs stay small)::

    {"mse-500": {"cosine": 0.62, "gain_knn": 0.71}}

A key fails when ``|now - stored| > atol + rtol * |stored|``; a key in ``higher_is_worse`` fails only on an
increase beyond that (an attack got stronger, a defence leakier), one in ``lower_is_worse`` only on a
decrease (honest utility fell). ``None`` (or NaN) stands for an undefined value and equals only itself.

>>> compare({"gain": 0.70}, {"gain": 0.80}, higher_is_worse={"gain"})
['gain: stored 0.7, now 0.8, tolerance atol=0.05 (only an increase fails)']
>>> compare({"gain": 0.70}, {"gain": 0.50}, higher_is_worse={"gain"})
[]
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from numbers import Real
from pathlib import Path
from types import MappingProxyType
from typing import Collection, Mapping

Value = float | None
Tolerance = Mapping[str, float]
DEFAULT_TOLERANCE: Tolerance = MappingProxyType({"atol": 0.05})
_TOLERANCE_KEYS = ("atol", "rtol")


def regression_path(test_file: str | Path, test_name: str) -> Path:
    """``<dir>/<module stem>/<test name>.json``; characters other than letters, digits and ``_`` become ``_``."""
    test_file = Path(test_file)
    return test_file.parent / test_file.stem / (re.sub(r"\W", "_", test_name) + ".json")


def clean_values(values: Mapping[str, object]) -> dict[str, Value]:
    """``values`` as ``{str: float | None}`` (NaN as None); a TypeError names the first bad entry."""
    if not isinstance(values, Mapping):
        raise TypeError(f"values must be a dict of name -> number; got {type(values).__name__}")
    out: dict[str, Value] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"value names must be non-empty strings; got {key!r}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, Real)):
            raise TypeError(f"value {key!r} must be a number or None; got {value!r}")
        out[key] = None if value is None or math.isnan(value) else float(value)
    return out


def check_tolerance(tolerance: Tolerance, where: str = "tolerance") -> dict[str, float]:
    """``tolerance`` if it holds only ``atol``/``rtol``, each a finite number >= 0; else a one-line ValueError."""
    if not isinstance(tolerance, Mapping) or set(tolerance) - set(_TOLERANCE_KEYS):
        raise ValueError(f"{where} must be a dict with atol and/or rtol; got {tolerance!r}")
    for key, value in tolerance.items():
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{where}: {key} must be a finite number >= 0; got {value!r}")
    return {k: float(tolerance[k]) for k in _TOLERANCE_KEYS if k in tolerance}


def _describe(tolerance: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in tolerance.items()) or "exact"


def check_options(now: Mapping[str, Value], tolerances: Mapping[str, Tolerance] | None = None,
                  default_tolerance: Tolerance = DEFAULT_TOLERANCE, higher_is_worse: Collection[str] = (),
                  lower_is_worse: Collection[str] = ()) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """The per-key and default tolerances, checked: every name they give is among ``now``'s keys, no key is
    both higher- and lower-is-worse; a one-line ValueError (TypeError for a bare string) otherwise."""
    if isinstance(higher_is_worse, str) or isinstance(lower_is_worse, str):
        raise TypeError("higher_is_worse and lower_is_worse take a set of value names, not one string")
    tolerances = dict(tolerances or {})
    for what, names in (("tolerances", tolerances), ("higher_is_worse", higher_is_worse),
                        ("lower_is_worse", lower_is_worse)):
        unknown = sorted(set(names) - set(now))
        if unknown:
            raise ValueError(f"{what} names {unknown[0]!r}, which is not among the values")
    both = sorted(set(higher_is_worse) & set(lower_is_worse))
    if both:
        raise ValueError(f"{both[0]!r} is in both higher_is_worse and lower_is_worse")
    return ({k: check_tolerance(v, f"tolerances[{k!r}]") for k, v in tolerances.items()},
            check_tolerance(default_tolerance, "default_tolerance"))


def compare(stored: Mapping[str, Value], now: Mapping[str, Value], tolerances: Mapping[str, Tolerance] | None = None,
            default_tolerance: Tolerance = DEFAULT_TOLERANCE, *, higher_is_worse: Collection[str] = (),
            lower_is_worse: Collection[str] = ()) -> list[str]:
    """One line per key that fails (stored vs now vs tolerance); empty when every key holds."""
    per_key, default = check_options(now, tolerances, default_tolerance, higher_is_worse, lower_is_worse)
    higher, lower = set(higher_is_worse), set(lower_is_worse)
    problems = []
    for key in sorted(set(stored) | set(now)):
        if key not in now:
            problems.append(f"{key}: stored {stored[key]:.4g}, now missing" if stored[key] is not None
                            else f"{key}: stored None, now missing")
            continue
        if key not in stored:
            problems.append(f"{key}: not stored, now {now[key]}")
            continue
        old, new = stored[key], now[key]
        if old is None or new is None:
            if old is not new:
                problems.append(f"{key}: stored {old}, now {new} (undefined on one side)")
            continue
        tol = per_key.get(key, default)
        limit = tol.get("atol", 0.0) + tol.get("rtol", 0.0) * abs(old) + 1e-12  # the limit itself holds
        diff = new - old
        bad = diff > limit if key in higher else -diff > limit if key in lower else abs(diff) > limit
        if bad:
            direction = (" (only an increase fails)" if key in higher else
                         " (only a decrease fails)" if key in lower else "")
            problems.append(f"{key}: stored {old:.4g}, now {new:.4g}, tolerance {_describe(tol)}{direction}")
    return problems


def load_sections(path: Path) -> dict[str, dict[str, Value]]:
    """The sections stored at ``path`` (empty when it does not exist); a one-line ValueError if unreadable."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not JSON ({err}); delete it or rerun with --sslaudit-regen") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path} is not a regression file ({{name: {{key: value}}}}); delete it to start over")
    return data


def store_section(path: Path, sections: Mapping[str, Mapping[str, Value]], name: str,
                  values: Mapping[str, Value]) -> None:
    """Write ``sections`` (what :func:`load_sections` gave) with section ``name`` set to ``values`` (to 6
    significant digits: diffs stay readable), atomically."""
    sections = {**sections, name: {k: None if v is None else float(f"{v:.6g}") for k, v in values.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(sections, indent=2, sort_keys=True, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
