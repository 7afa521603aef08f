"""pytest plugin: attack and defence regression tests for an encoder served behind an API.

Installed with sslaudit (entry point ``pytest11``, or ``-p sslaudit.pytest_plugin``). It adds fixtures and
options only: nothing is autouse and nothing heavy is imported until a test asks for a fixture.
``examples/test_my_encoder.py`` is the file a provider copies::

    @pytest.mark.sslaudit_audit
    def test_noise_keeps_the_thief_out(sslaudit_steal, sslaudit_regression):
        result = sslaudit_steal(attack="mse", queries=500, defenses=("noise:sigma=0.5",), epochs=5)
        assert result.stolen.gain_recovered.knn < 0.8           # a threshold: a plain assert
        sslaudit_regression.check("mse-noise", {"gain_knn": result.stolen.gain_recovered.knn},
                                  higher_is_worse={"gain_knn"})  # no stronger attack than stored

Fixtures: ``sslaudit_victim`` (session: the shipped tiny SimCLR victim; override it in your conftest.py
with your encoder, e.g. ``resolve_victim("my_pkg.models:encoder", weights=..., native=InputSpec(3, 32))``),
``sslaudit_pool`` and ``sslaudit_task`` (session: FMNIST test[:5000] and a 1,000/1,000-image probe task;
skipped when Fashion-MNIST is missing), ``sslaudit_api`` (factory of metered APIs), ``sslaudit_steal``
(runner returning a :class:`~sslaudit.result.StealResult`; identical steals run once per session) and
``sslaudit_regression`` (stored values, :mod:`sslaudit.pytest_regression`). Defences draw their noise
from a fixed secret, so stored values reproduce. Options: ``--sslaudit-regen`` rewrites the stored values
of failing checks (the test fails once, saying so); ``--sslaudit-report PATH`` (``.json``, ``.html`` or
``.md``) writes an audit report of every steal the session ran. Marker: ``sslaudit_audit``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Mapping, Sequence

import pytest

from sslaudit import pytest_regression as reg

if TYPE_CHECKING:
    from sslaudit.api import SimulatedAPI
    from sslaudit.data import ImageData
    from sslaudit.result import StealResult
    from sslaudit.tasks import DownstreamTask
    from sslaudit.victim import Victim

EVAL_TRAIN, EVAL_TEST = 1000, 1000  # the smallest train split whose 1 % holds one label per class
PRICE_PER_1K = 1.0
ENTRY_POINT = "sslaudit"  # pyproject.toml: [project.entry-points.pytest11]
SECRET_LABEL = "sslaudit-pytest"  # a fixed deployment secret: the defences' noise is the same every run
REPORT_KINDS = {".json": "json", ".html": "html", ".htm": "html", ".md": "md"}
NO_FMNIST = "Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"


@dataclass
class _Session:
    """What the session's steals left behind: report cells, and results by cell for reuse."""

    report: Path | None
    cells: list[dict] = field(default_factory=list)
    results: dict[tuple, tuple[StealResult, tuple]] = field(default_factory=dict)
    summary: str | None = None


_STATE = pytest.StashKey[_Session]()


def pytest_plugin_registered(plugin: object, plugin_name: str, manager: pytest.PytestPluginManager) -> None:
    """Loaded by ``-p sslaudit.pytest_plugin`` before the entry points: block the entry point ``sslaudit``,
    which would register this module a second time (pluggy refuses that)."""
    if plugin is sys.modules[__name__] and plugin_name != ENTRY_POINT and manager.get_plugin(ENTRY_POINT) is None:
        manager.set_blocked(ENTRY_POINT)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sslaudit", "sslaudit attack/defence regression tests")
    group.addoption("--sslaudit-regen", action="store_true", default=False,
                    help="rewrite the stored values of failing sslaudit_regression checks (each still fails once)")
    group.addoption("--sslaudit-report", metavar="PATH", default=None,
                    help="at session end write an audit report of every steal run (PATH ends in .json, .html or .md)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sslaudit_audit: an attack/defence audit test (steals through the API)")
    report = config.getoption("sslaudit_report", None)
    if report is not None and Path(report).suffix.lower() not in REPORT_KINDS:
        raise pytest.UsageError(f"--sslaudit-report {report}: the name must end in .json, .html or .md")
    config.stash[_STATE] = _Session(None if report is None else Path(report).absolute())


def pytest_report_header(config: pytest.Config) -> str:
    report = config.stash[_STATE].report if _STATE in config.stash else None
    return f"sslaudit: pytest plugin active (regen: {config.getoption('sslaudit_regen')}, report: {report})"


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is None or state.report is None:
        return
    if not state.cells:
        state.summary = f"sslaudit: no steal ran in this session; no audit report written to {state.report}"
        return
    try:
        state.summary = _write_report(audit_document(state.cells), state.report)
    except (OSError, ValueError) as err:
        state.summary = f"sslaudit: could not write the audit report {state.report}: {err}"
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None and state.summary:
        terminalreporter.write_line(state.summary)


def audit_document(cells: list[dict]) -> dict:
    """The ``sslaudit.audit/1`` document of ``cells`` (the report's input)."""
    from sslaudit.runinfo import run_info

    machine = {k: v for k, v in run_info(seed=0, wall_seconds=0).items() if k not in ("seed", "wall_seconds")}
    return {"schema_version": "sslaudit.audit/1", "name": "pytest session",
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "price_per_1k": PRICE_PER_1K, "machine": machine, "config": {}, "cells": list(cells)}


def _write_report(doc: dict, path: Path) -> str:
    """Write ``doc`` to ``path`` (kind by suffix); the line the terminal summary shows."""
    try:
        from sslaudit.report.audit_json import write_audit_reports
    except ModuleNotFoundError as err:
        if err.name != "sslaudit.report.audit_json":
            raise
        from sslaudit.score_cache import write_atomically

        target = path.with_suffix(".json")
        write_atomically(target, json.dumps(_finite(doc), indent=2, allow_nan=False) + "\n")
        return f"sslaudit: wrote the audit document of {len(doc['cells'])} steal(s) to {target} (no report renderer)"
    write_audit_reports(doc, **{REPORT_KINDS[path.suffix.lower()]: path})
    return f"sslaudit: wrote the audit report of {len(doc['cells'])} steal(s) to {path}"


def _finite(value: object) -> object:
    """``value`` with NaN and infinities as None, so the JSON is strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return [_finite(v) for v in value] if isinstance(value, (list, tuple)) else value


def _fashion_mnist(load: Callable[[], Any]) -> Any:
    from sslaudit.data import DataNotFoundError

    try:
        return load()
    except DataNotFoundError:
        pytest.skip(NO_FMNIST)


def _specs(defenses: str | Sequence[str]) -> list[str]:
    return [defenses] if isinstance(defenses, str) else list(defenses)


@pytest.fixture(scope="session")
def sslaudit_victim() -> Victim:
    """The encoder under audit: the shipped tiny SimCLR victim. Override it in your conftest.py with a
    session fixture returning your own :class:`~sslaudit.victim.Victim` (``sslaudit.zoo.resolve_victim``)."""
    from sslaudit.zoo import resolve_victim

    return resolve_victim("simclr", train_if_missing=False, progress=False)


@pytest.fixture(scope="session")
def sslaudit_pool() -> ImageData:
    """The attacker's pool: Fashion-MNIST test[:5000] (never probed); skipped when the dataset is missing."""
    from sslaudit.tasks import attack_pool

    return _fashion_mnist(lambda: attack_pool("fashion-mnist"))


@pytest.fixture(scope="session")
def sslaudit_task() -> DownstreamTask:
    """A small downstream task: probes train on 1,000 FMNIST train labels and test on 1,000 held-out images."""
    from sslaudit.tasks import downstream_task

    return _fashion_mnist(lambda: downstream_task(EVAL_TRAIN, EVAL_TEST))


@pytest.fixture
def sslaudit_api(sslaudit_victim: Victim, request: pytest.FixtureRequest) -> Callable[..., SimulatedAPI]:
    """``make(defenses=(), budget=None, price_per_1k=1.0)``: a metered API over the victim with these defences
    (specs as on the command line; ``budget`` per account, None: unlimited)."""

    def make(defenses: str | Sequence[str] = (), budget: int | None = None,
             price_per_1k: float = PRICE_PER_1K) -> SimulatedAPI:
        from sslaudit.api import SimulatedAPI
        from sslaudit.registry import build
        from sslaudit.secret import DeploymentSecret

        built = [build("defense", spec) for spec in _specs(defenses)]
        calibration = None
        if any(hasattr(d, "calibrate") for d in built):
            from sslaudit.audit import provider_sample

            calibration = provider_sample(request.getfixturevalue("sslaudit_task"))
        return SimulatedAPI(sslaudit_victim.encoder, defenses=built, price_per_1k=price_per_1k, budget=budget,
                            secret=DeploymentSecret.fixed(SECRET_LABEL), calibration=calibration)

    return make


@pytest.fixture
def sslaudit_steal(sslaudit_victim: Victim, sslaudit_pool: ImageData, sslaudit_task: DownstreamTask,
                   request: pytest.FixtureRequest) -> Callable[..., StealResult]:
    """``run(attack="mse", queries=500, defenses=(), seed=0, epochs=None, honest=False)``: steal through the
    metered API and score the stolen encoder; ``epochs`` shortens the attack's schedule (None: the recipe's);
    ``honest`` also scores an honest account through the same API (``result.honest.utility``)."""
    state = request.config.stash[_STATE]

    def run(attack: str = "mse", queries: int = 500, defenses: str | Sequence[str] = (), seed: int = 0,
            epochs: int | None = None, honest: bool = False) -> StealResult:
        from sslaudit.audit import steal
        from sslaudit.registry import build
        from sslaudit.secret import DeploymentSecret

        specs = _specs(defenses)
        cell = {"victim": sslaudit_victim.name, "defense": " + ".join(specs) or "none", "attack": attack,
                "budget": queries, "seed": seed, "pool": sslaudit_pool.name, "price_per_1k": PRICE_PER_1K,
                "epochs": epochs, "eval_train": len(sslaudit_task.train), "eval_test": len(sslaudit_task.test)}
        text = json.dumps(cell, sort_keys=True)
        held = (sslaudit_victim, sslaudit_pool, sslaudit_task)  # kept alive, so their ids stay theirs
        memo = (text, honest, *map(id, held))
        if memo in state.results:
            return state.results[memo][0]
        built = build("attack", attack)
        began = time.perf_counter()
        result = steal(sslaudit_victim, built.with_epochs(epochs) if epochs is not None else built, sslaudit_pool,
                       queries, sslaudit_task, defenses=[build("defense", s) for s in specs],
                       price_per_1k=PRICE_PER_1K, seed=seed, honest=honest,
                       secret=DeploymentSecret.fixed(SECRET_LABEL))
        state.results[memo] = (result, held)
        state.cells.append({"key": hashlib.sha256(text.encode()).hexdigest(), **cell,
                            "wall_seconds": round(time.perf_counter() - began, 1), "result": result.to_dict()})
        return result

    return run


class RegressionCheck:
    """``check(name, values, ...)`` against the values stored for one test (see :mod:`sslaudit.pytest_regression`)."""

    def __init__(self, path: Path, regen: bool) -> None:
        self.path, self.regen = path, regen

    def check(self, name: str, values: Mapping[str, float | None],
              tolerances: Mapping[str, reg.Tolerance] | None = None,
              default_tolerance: reg.Tolerance = reg.DEFAULT_TOLERANCE, *, higher_is_worse: Collection[str] = (),
              lower_is_worse: Collection[str] = ()) -> None:
        """Fail when a value moved beyond its tolerance (``tolerances[key]``, else ``default_tolerance``:
        ``atol`` + ``rtol`` x |stored|); keys in ``higher_is_worse`` fail only on an increase, keys in
        ``lower_is_worse`` only on a decrease. Missing stored values are written and the test fails once."""
        __tracebackhide__ = True
        if not isinstance(name, str) or not name:
            raise TypeError(f"check() needs a non-empty name; got {name!r}")
        now = reg.clean_values(values)
        reg.check_options(now, tolerances, default_tolerance, higher_is_worse, lower_is_worse)
        try:
            sections = reg.load_sections(self.path)
        except ValueError as err:
            if not self.regen:
                pytest.fail(str(err), pytrace=False)
            sections = {}
        if name not in sections:
            reg.store_section(self.path, sections, name, now)
            pytest.fail(f"{self.path}: no stored values for {name!r}; wrote them, rerun to compare", pytrace=False)
        problems = reg.compare(reg.clean_values(sections[name]), now, tolerances, default_tolerance,
                               higher_is_worse=higher_is_worse, lower_is_worse=lower_is_worse)
        if not problems:
            return
        lines = "\n  ".join(problems)
        if self.regen:
            reg.store_section(self.path, sections, name, now)
            pytest.fail(f"{self.path}: rewrote {name!r} (--sslaudit-regen); it differed:\n  {lines}", pytrace=False)
        pytest.fail(f"{self.path}: {name!r} moved beyond tolerance (--sslaudit-regen accepts it):\n  {lines}",
                    pytrace=False)


@pytest.fixture
def sslaudit_regression(request: pytest.FixtureRequest) -> RegressionCheck:
    """Stored values of this test, in ``<test dir>/<module stem>/<test name>.json`` (pytest-regressions' layout)."""
    return RegressionCheck(reg.regression_path(request.node.path, request.node.name),
                           bool(request.config.getoption("sslaudit_regen")))
