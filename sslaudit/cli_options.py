"""Validation for the ``sslaudit`` command line: every bad input is one line, found before any work starts.

>>> check_writable(Path("out/r.json"))  # creates out/, proves a file can be written there  # doctest: +SKIP
"""
from __future__ import annotations

import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from sslaudit import registry
from sslaudit.tasks import FEW_LABEL_FRACTION

T = TypeVar("T")
FMNIST_CLASSES = 10
MIN_EVAL_TEST = 100  # accuracy then moves in steps of at most 1 %


class OneLineGroup(click.Group):
    """A group whose usage errors and warnings print as single lines (no usage banner: it hides the fix)."""

    def invoke(self, ctx: click.Context) -> Any:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            try:
                return super().invoke(ctx)
            except click.UsageError as err:
                err.ctx = None
                raise


def _one_line_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    click.echo(f"warning: {' '.join(str(message).split())}", err=True)


class AtLeast(click.ParamType):
    """A whole number ``>= minimum``; the message says why the minimum is what it is."""

    name = "integer"

    def __init__(self, minimum: int, why: str = "") -> None:
        self.minimum, self.why = minimum, why

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"expects a whole number, got {value!r}", param, ctx)
        if number < self.minimum:
            self.fail(f"must be at least {self.minimum}{self.why}; got {number}", param, ctx)
        return number


class Probability(click.ParamType):
    """A number strictly between 0 and 1 (a significance level)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not 0 < number < 1:
            self.fail(f"must be a number between 0 and 1, e.g. 0.01; got {value!r}", param, ctx)
        return number


class NonNegativeNumber(click.ParamType):
    """A finite float ``>= 0`` (no nan, no inf)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number < 0:
            self.fail(f"must be a finite number >= 0, e.g. 1.0; got {value!r}", param, ctx)
        return number


def min_eval_train() -> int:
    """The fewest train labels whose 1 % split holds enough images per class for the few-label probe."""
    return math.ceil(FMNIST_CLASSES / FEW_LABEL_FRACTION)  # one image per class in the 1 % split


def eval_train_type() -> AtLeast:
    """``--eval-train``: at least :func:`min_eval_train` images, with the reason in the message."""
    minimum = min_eval_train()
    per_class = round(FEW_LABEL_FRACTION * minimum / FMNIST_CLASSES)
    return AtLeast(minimum, f" (the 1 % few-label split then holds {per_class} image per class)")


def build_component(kind: str, spec: str, option: str) -> Any:
    """``registry.build(kind, spec)``, any mistake a one-line usage error on ``option``."""
    try:
        return registry.build(kind, spec)
    except (KeyError, ValueError) as err:
        raise click.BadParameter(_message(err), param_hint=f"'{option}'") from err


def check_arch(name: str, option: str) -> str:
    """``name`` if it is a registered architecture, else a one-line usage error listing them."""
    try:
        registry.lookup_entry("arch", name)
    except KeyError as err:
        raise click.BadParameter(_message(err), param_hint=f"'{option}'") from err
    return name


def check_writable(path: Path, option: str = "--json") -> None:
    """Create ``path``'s folder and prove a file can be written in it, before any work is done."""
    try:
        if path.is_dir():
            raise IsADirectoryError(0, "it is a folder")
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise NotADirectoryError(0, f"{blocker} is a file, not a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".check"):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        raise click.BadParameter(f"cannot write {path} ({reason}); choose a writable path",
                                 param_hint=f"'{option}'") from err


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def friendly(thunk: Callable[[], T]) -> T:
    """Run ``thunk``; expected user errors become a one-line message (exit 1) instead of a traceback."""
    from sslaudit.data import DataNotFoundError

    try:
        return thunk()
    except (KeyError, DataNotFoundError, FileNotFoundError, ValueError, ImportError) as err:
        raise click.ClickException(_message(err)) from err


def _message(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and err.args else err
    return " ".join(str(text).split())


def save_victim_atomically(victim: Any, path: Path) -> Path:
    """``victim.save`` into a temporary folder beside ``path``, then each file renamed into place (the card
    last, so a reader never finds a card whose weights are not there yet); returns the weights path."""
    import shutil

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        victim.save(tmp / path.name)
        for suffix in (".safetensors", ".head.safetensors", ".json"):
            if (tmp / path.name).with_suffix(suffix).is_file():
                os.replace((tmp / path.name).with_suffix(suffix), path.with_suffix(suffix))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path.with_suffix(".safetensors")


def save_stolen_encoder(encoder: Any, report: Any, path: Path, *, attack: str, victim: str, seed: int) -> Path:
    """Save a stolen encoder as a victim card (``"method": "stolen:<attack>"``) that ``Victim.load`` reads."""
    import hashlib
    import json

    from sslaudit.models import count_parameters
    from sslaudit.victim import Victim

    card = {"method": f"stolen:{attack}", "arch": encoder.arch, "parameters": count_parameters(encoder),
            "dim": encoder.dim, "input": encoder.spec.to_dict(), "attack": report.stolen.config,
            "queries": report.queries.sent, "budget": report.queries.budget, "pool": report.queries.pool,
            "victim": victim, "defenses": report.defenses, "seed": seed}
    card = json.loads(json.dumps(card))
    card["config_key"] = hashlib.sha256(json.dumps(card, sort_keys=True).encode()).hexdigest()[:12]
    card["scores"] = {report.task: report.stolen.scores.to_dict()}
    return save_victim_atomically(Victim(encoder.cpu().eval(), card), path)


def load_suspect(path: Path, option: str = "--suspect") -> Any:
    """``Victim.load(path)``; a missing or unreadable encoder, or one that does not take 1x28x28 images, is a
    one-line usage error on ``option``."""
    from sslaudit.victim import BadCard, Victim

    try:
        suspect = Victim.load(path)
    except (FileNotFoundError, BadCard) as err:
        raise click.BadParameter(_message(err), param_hint=f"'{option}'") from err
    spec = suspect.encoder.spec
    if (spec.channels, spec.size) != (1, 28):
        raise click.BadParameter(f"{path} takes {spec.channels}x{spec.size}x{spec.size} images; the ownership tests "
                                 "query 1x28x28 Fashion-MNIST: give an encoder with that input",
                                 param_hint=f"'{option}'")
    return suspect


def load_head_option(path: Path | None, option: str = "--watermark") -> Any:
    """The watermark head at ``path`` (None for None), a missing or bad file a one-line usage error."""
    from sslaudit.ownership.watermark import load_watermark
    from sslaudit.victim import BadCard

    if path is None:
        return None
    try:
        return load_watermark(path)
    except (FileNotFoundError, BadCard) as err:
        raise click.BadParameter(_message(err), param_hint=f"'{option}'") from err


def find_watermark(victim_spec: str, victim: Any) -> Any:
    """The head saved beside the victim (``VICTIM.watermark.safetensors``), or None; a bad one is an error."""
    from sslaudit.ownership.watermark import saved_watermark

    return friendly(lambda: saved_watermark(victim_spec, victim))
