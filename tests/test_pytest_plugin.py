"""The pytest plugin (sslaudit.pytest_plugin): inner test sessions run with pytester, the steal stubbed
except in one slow test; the comparison helpers directly."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest

# Imported here, before any inner session: pytester restores sys.modules after each in-process run,
# and torch and the registered recipes must not be imported a second time.
import sslaudit.audit  # noqa: F401
from sslaudit import registry
from sslaudit.pytest_regression import compare, regression_path

pytest_plugins = ["pytester"]
registry.names("attack"), registry.names("defense")

PLUGIN = ("-p", "sslaudit.pytest_plugin")  # loads it even where entry points are off; harmless where on


def check_file(values: str, **options: str) -> str:
    """An inner test module whose test ``test_it`` checks ``values`` (Python source) under the name ``m``."""
    extra = "".join(f", {k}={v}" for k, v in options.items())
    return f"def test_it(sslaudit_regression):\n    sslaudit_regression.check('m', {values}{extra})\n"


def stored(pytester: pytest.Pytester, module: str = "test_values", test: str = "test_it") -> dict:
    return json.loads((pytester.path / module / f"{test}.json").read_text())


def store(pytester: pytest.Pytester, values: dict, module: str = "test_values", test: str = "test_it") -> None:
    folder = pytester.path / module
    folder.mkdir(exist_ok=True)
    (folder / f"{test}.json").write_text(json.dumps({"m": values}))


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*PLUGIN, *args)


def test_first_run_writes_and_fails_second_passes(pytester):
    pytester.makepyfile(test_values=check_file("{'gain': 0.5, 'undefined': None}"))
    first = run(pytester)
    first.assert_outcomes(failed=1)
    first.stdout.fnmatch_lines(["*test_values/test_it.json: no stored values for 'm'; wrote them, rerun to compare"])
    assert stored(pytester) == {"m": {"gain": 0.5, "undefined": None}}
    run(pytester).assert_outcomes(passed=1)


def test_value_beyond_tolerance_fails_naming_each_key(pytester):
    store(pytester, {"gain": 0.5, "cosine": 0.9, "steady": 1.0})
    pytester.makepyfile(test_values=check_file("{'gain': 0.6, 'cosine': 0.8, 'steady': 1.04}"))
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*'m' moved beyond tolerance (--sslaudit-regen accepts it):",
                                 "  cosine: stored 0.9, now 0.8, tolerance atol=0.05",
                                 "  gain: stored 0.5, now 0.6, tolerance atol=0.05"])
    assert "steady" not in result.stdout.str()
    assert stored(pytester)["m"]["gain"] == 0.5  # a failing check never rewrites without --sslaudit-regen


def test_regen_rewrites_fails_once_then_passes(pytester):
    store(pytester, {"gain": 0.5, "gone": 1.0})
    pytester.makepyfile(test_values=check_file("{'gain': 0.6, 'new': 2.0}"))
    result = run(pytester, "--sslaudit-regen")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*rewrote 'm' (--sslaudit-regen); it differed:", "  gain: stored 0.5, now 0.6*",
                                 "  gone: stored 1, now missing", "  new: not stored, now 2.0"])
    assert stored(pytester) == {"m": {"gain": 0.6, "new": 2.0}}
    run(pytester).assert_outcomes(passed=1)


def test_regen_leaves_a_passing_check_alone(pytester):
    store(pytester, {"gain": 0.5})
    pytester.makepyfile(test_values=check_file("{'gain': 0.52}"))
    run(pytester, "--sslaudit-regen").assert_outcomes(passed=1)
    assert stored(pytester) == {"m": {"gain": 0.5}}


@pytest.mark.parametrize("now, outcome", [(0.3, "passed"), (0.54, "passed"), (0.6, "failed")])
def test_higher_is_worse_ignores_improvements(pytester, now, outcome):
    store(pytester, {"gain": 0.5})
    pytester.makepyfile(test_values=check_file(f"{{'gain': {now}}}", higher_is_worse="{'gain'}"))
    result = run(pytester)
    result.assert_outcomes(**{outcome: 1})
    if outcome == "failed":
        result.stdout.fnmatch_lines(["  gain: stored 0.5, now 0.6, tolerance atol=0.05 (only an increase fails)"])


@pytest.mark.parametrize("now, outcome", [(0.99, "passed"), (0.8, "failed")])
def test_lower_is_worse_ignores_improvements(pytester, now, outcome):
    store(pytester, {"utility": 0.9})
    pytester.makepyfile(test_values=check_file(f"{{'utility': {now}}}", lower_is_worse="{'utility'}"))
    run(pytester).assert_outcomes(**{outcome: 1})


def test_per_key_and_default_tolerances(pytester):
    store(pytester, {"loose": 0.5, "relative": 100.0, "exact": 1.0})
    pytester.makepyfile(test_values=check_file(
        "{'loose': 0.65, 'relative': 109.0, 'exact': 1.0}",
        tolerances="{'loose': dict(atol=0.2), 'relative': dict(rtol=0.1)}", default_tolerance="dict(atol=0)"))
    run(pytester).assert_outcomes(passed=1)
    pytester.makepyfile(test_values=check_file("{'loose': 0.5, 'relative': 100.0, 'exact': 1.001}",
                                               default_tolerance="dict(atol=0)"))
    run(pytester).stdout.fnmatch_lines(["  exact: stored 1, now 1.001, tolerance atol=0"])


def test_each_parametrized_test_has_its_own_file(pytester):
    pytester.makepyfile(test_values="""
        import pytest

        @pytest.mark.parametrize("attack", ["mse", "infonce:temperature=0.1"])
        def test_it(sslaudit_regression, attack):
            sslaudit_regression.check(attack, {"gain": 0.5})
    """)
    run(pytester).assert_outcomes(failed=2)
    assert stored(pytester, test="test_it_mse_") == {"mse": {"gain": 0.5}}
    assert stored(pytester, test="test_it_infonce_temperature_0_1_") == {"infonce:temperature=0.1": {"gain": 0.5}}
    run(pytester).assert_outcomes(passed=2)


def test_bad_calls_are_one_line_errors_and_write_nothing(pytester):
    pytester.makepyfile(test_values="""
        import pytest

        def test_it(sslaudit_regression):
            with pytest.raises(TypeError, match="value 'gain' must be a number or None; got '0.5'"):
                sslaudit_regression.check("m", {"gain": "0.5"})
            with pytest.raises(ValueError, match="tolerances names 'gian', which is not among the values"):
                sslaudit_regression.check("m", {"gain": 0.5}, tolerances={"gian": dict(atol=1)})
            with pytest.raises(ValueError, match="must be a dict with atol and/or rtol"):
                sslaudit_regression.check("m", {"gain": 0.5}, default_tolerance=dict(abs=1))
            with pytest.raises(TypeError, match="a set of value names, not one string"):
                sslaudit_regression.check("m", {"gain": 0.5}, higher_is_worse="gain")
    """)
    run(pytester).assert_outcomes(passed=1)
    assert not (pytester.path / "test_values").exists()


def test_an_unreadable_file_fails_and_regen_replaces_it(pytester):
    (pytester.path / "test_values").mkdir()
    (pytester.path / "test_values" / "test_it.json").write_text("{not json")
    pytester.makepyfile(test_values=check_file("{'gain': 0.5}"))
    run(pytester).stdout.fnmatch_lines(["*test_it.json is not JSON (*); delete it or rerun with --sslaudit-regen"])
    run(pytester, "--sslaudit-regen").assert_outcomes(failed=1)
    assert stored(pytester) == {"m": {"gain": 0.5}}


def test_compare_directly():
    assert compare({"a": 1.0}, {"a": 1.05}) == []  # the limit itself holds
    assert compare({"a": None}, {"a": None}) == []
    assert compare({"a": None}, {"a": 0.1}) == ["a: stored None, now 0.1 (undefined on one side)"]
    assert compare({"a": 1.0}, {"a": 0.9}, lower_is_worse={"a"}) == [
        "a: stored 1, now 0.9, tolerance atol=0.05 (only a decrease fails)"]
    with pytest.raises(ValueError, match="both higher_is_worse and lower_is_worse"):
        compare({"a": 1.0}, {"a": 1.0}, higher_is_worse={"a"}, lower_is_worse={"a"})
    assert regression_path("tests/test_x.py", "test_y[a-b]").as_posix() == "tests/test_x/test_y_a_b_.json"


# The report: the fixtures overridden with stand-ins and sslaudit.audit.steal stubbed, so no steal runs.
STUB_CONFTEST = """
import types

import pytest

import sslaudit.audit
from sslaudit.result import (EncoderScores, Fidelity, FloorRow, QueryAccount, Ratios, StealResult, StolenRow,
                             VictimRow)

@pytest.fixture(scope="session")
def sslaudit_victim():
    return types.SimpleNamespace(name="fake-victim", encoder=None)


@pytest.fixture(scope="session")
def sslaudit_pool():
    return types.SimpleNamespace(name="fake-pool", calls=[])  # the stub records its calls here


@pytest.fixture(scope="session")
def sslaudit_task():
    return types.SimpleNamespace(train=[0] * 1000, test=[0] * 100)


def fake_steal(victim, attack, pool, budget, task, *, defenses, price_per_1k, seed, honest, secret):
    pool.calls.append((type(attack).__name__, attack.train.epochs, [type(d).__name__ for d in defenses], budget))
    scores = EncoderScores(0.5, 0.01, 0.8, 0.7)
    ratios = Ratios(0.5, 0.6, float("nan"))
    stolen = StolenRow("DirectExtraction", {"name": "DirectExtraction"}, "convnet", 10, scores, Fidelity(0.9, 0.8),
                       ratios, ratios, 1.0, 0.1)
    queries = QueryAccount(budget, budget, budget / 1000, budget, 1, budget / 1000, price_per_1k, pool.name)
    return StealResult(VictimRow(victim.name, "simclr", "convnet", 10, scores), FloorRow("convnet", scores), stolen,
                       queries, [], "task", {"seed": seed})


@pytest.fixture(autouse=True)
def stub_steal(monkeypatch):
    monkeypatch.setattr(sslaudit.audit, "steal", fake_steal)
"""

STEALS = """
def test_steals(sslaudit_steal, sslaudit_pool):
    first = sslaudit_steal(attack="mse", queries=300, epochs=2)
    assert sslaudit_steal(attack="mse", queries=300, epochs=2) is first  # the same steal runs once
    sslaudit_steal(attack="infonce", queries=200, defenses="noise:sigma=0.5")
    assert sslaudit_pool.calls == [("DirectExtraction", 2, [], 300), ("DirectExtraction", 100, ["GaussianNoise"], 200)]
"""


def test_report_json_holds_every_steal(pytester):
    pytester.makeconftest(STUB_CONFTEST)
    pytester.makepyfile(test_steals=STEALS)
    result = run(pytester, "--sslaudit-report", "out/audit.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["sslaudit: wrote the audit report of 2 steal(s) to *audit.json"])
    doc = json.loads((pytester.path / "out" / "audit.json").read_text())
    assert doc["schema_version"] == "sslaudit.audit/1" and doc["name"] == "pytest session"
    assert doc["price_per_1k"] == 1.0 and doc["config"] == {} and doc["created"].endswith("+00:00")
    assert "torch" in doc["machine"]["versions"] and "seed" not in doc["machine"]
    first, second = doc["cells"]
    assert {k: first[k] for k in ("victim", "defense", "attack", "budget", "seed", "epochs")} == {
        "victim": "fake-victim", "defense": "none", "attack": "mse", "budget": 300, "seed": 0, "epochs": 2}
    assert (second["defense"], second["attack"], second["budget"]) == ("noise:sigma=0.5", "infonce", 200)
    cell = {k: v for k, v in first.items() if k not in ("key", "wall_seconds", "result")}
    assert first["key"] == hashlib.sha256(json.dumps(cell, sort_keys=True).encode()).hexdigest()
    assert first["result"]["queries"]["sent"] == 300 and first["result"]["stolen"]["gain_recovered"]["knn"] is None


def test_report_by_suffix_and_fallback(pytester, monkeypatch):
    pytester.makeconftest(STUB_CONFTEST)
    pytester.makepyfile(test_steals=STEALS)
    if importlib.util.find_spec("sslaudit.report.audit_json") is not None:
        run(pytester, "--sslaudit-report", "audit.md").assert_outcomes(passed=1)
        assert "fake-victim" in (pytester.path / "audit.md").read_text()
    monkeypatch.setitem(sys.modules, "sslaudit.report.audit_json", None)  # the renderer missing
    result = run(pytester, "--sslaudit-report", "fallback.html")
    result.stdout.fnmatch_lines(["sslaudit: wrote the audit document of 2 steal(s) to *fallback.json (no report*"])
    assert len(json.loads((pytester.path / "fallback.json").read_text())["cells"]) == 2


def test_report_option_checks_and_empty_sessions(pytester):
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = run(pytester, "--sslaudit-report", "audit.pdf")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--sslaudit-report audit.pdf: the name must end in .json, .html or .md"])
    result = run(pytester, "--sslaudit-report", "audit.json")
    assert result.ret == pytest.ExitCode.OK and not (pytester.path / "audit.json").exists()
    result.stdout.fnmatch_lines(["sslaudit: no steal ran in this session; no audit report written to *audit.json"])


def test_header_marker_and_nothing_heavy_when_unused(pytester):
    pytester.makepyfile(test_marked="""
        import pytest

        @pytest.mark.sslaudit_audit
        def test_marked():
            pass
    """)
    result = run(pytester, "--strict-markers")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["sslaudit: pytest plugin active*"])
    code = ("import sys, sslaudit.pytest_plugin\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_api_factory_builds_defended_metered_apis(pytester):
    pytester.makepyfile(test_plugin_api_factory="""
        import types

        import pytest
        import torch

        from sslaudit.models import InputSpec, build_encoder

        @pytest.fixture(scope="session")
        def sslaudit_victim():  # what a provider's conftest.py does, here with an untrained encoder
            return types.SimpleNamespace(name="mine", encoder=build_encoder("convnet-small", InputSpec()))

        def test_api(sslaudit_api):
            api = sslaudit_api(defenses=("noise:sigma=0.5",), budget=8, price_per_1k=2.0)
            assert [type(d).__name__ for d in api.defenses] == ["GaussianNoise"] and api.price_per_1k == 2.0
            api.query(torch.rand(8, 1, 28, 28), account="thief")
            assert api.remaining("thief") == 0 and api.ledger("thief").cost == pytest.approx(0.016)
            assert sslaudit_api().defenses == [] and sslaudit_api().remaining("thief") is None
    """)
    run(pytester).assert_outcomes(passed=1)


@pytest.mark.slow
def test_a_real_tiny_steal_is_reported(pytester, needs_fmnist):
    pytester.makepyfile(test_real="""
        def test_real(sslaudit_steal, sslaudit_regression):
            result = sslaudit_steal(attack="mse", queries=200, epochs=1)
            assert result.queries.sent == 200 and result.victim.name.startswith("simclr-convnet")
    """)
    result = run(pytester, "--sslaudit-report", "real.json")
    result.assert_outcomes(passed=1)
    cell, = json.loads((pytester.path / "real.json").read_text())["cells"]
    assert cell["budget"] == 200 and cell["eval_train"] == 1000 and cell["result"]["queries"]["cost"] == 0.2
