"""Read a user's TOML file, every failure one line of the caller's error type saying what to do.

>>> read_toml("missing.toml", ValueError, "write one")  # doctest: +SKIP
Traceback (most recent call last):
ValueError: no file at missing.toml; write one
"""
from __future__ import annotations

import tomllib
from pathlib import Path


def read_toml(path: str | Path, error: type[Exception], missing_hint: str) -> dict:
    """The parsed document at ``path``; ``error`` (one line) if it is missing or not valid TOML."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError as err:
        raise error(f"no file at {path}; {missing_hint}") from err
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise error(f"{path} is not valid TOML: {err}") from err
