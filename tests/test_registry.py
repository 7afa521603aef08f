"""Names → recipes: variants, stacked registrations, build("name:key=value") and its one-line errors."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import pytest

from sslaudit import registry
from sslaudit.models import BACKBONES
from sslaudit.registry import OptionError, build, parse_component


@pytest.fixture
def scratch(monkeypatch):
    """Registrations made in a test vanish after it."""
    for kind in registry.KINDS:
        registry.names(kind)
        monkeypatch.setitem(registry._REGISTRIES, kind, dict(registry._REGISTRIES[kind]))


@dataclass(kw_only=True)
class Inner:
    depth: int = 1


def make_recipe():
    @registry.register_attack("t-alpha", loss="alpha")
    @registry.register_attack("t-beta", loss="beta")
    @dataclass(kw_only=True)
    class Recipe:
        loss: str
        lam: float = 1.0
        views: int = 2
        exact: bool = False
        name: str = "x"
        temperature: float | None = None
        mode: Literal["fast", "slow"] = "fast"
        inner: Inner | None = None

        def __post_init__(self) -> None:
            if self.lam < 0:
                raise ValueError("lam must be non-negative")

    return Recipe


def test_recipes_are_registered_by_name():
    assert "simclr" in registry.names("victim")
    assert {"mse", "infonce"} <= set(registry.names("attack"))
    assert {"none", "noise"} <= set(registry.names("defense"))


def test_unknown_name_lists_the_choices():
    with pytest.raises(KeyError, match="choose one of: .*mse"):
        registry.get_attack("telepathy")
    with pytest.raises(KeyError, match="choose one of: .*noise"):
        build("defense", "volume:level=3")


def test_double_registration_is_refused(scratch):
    registry.register_defense("test-dup")(int)
    with pytest.raises(ValueError, match="twice"):
        registry.register_defense("test-dup")(float)
    with pytest.raises(ValueError, match="twice"):
        registry.register_defense("test-dup", base=2)(int)  # same object, another variant
    registry.register_defense("test-dup")(int)  # the same registration again is harmless


def test_stacked_variants_share_one_class(scratch):
    recipe = make_recipe()
    assert build("attack", "t-alpha").loss == "alpha" and build("attack", "t-beta").loss == "beta"
    entry = registry.lookup_entry("attack", "t-beta")
    assert entry.obj is recipe and entry.variant == {"loss": "beta"}
    factory = registry.get_attack("t-alpha")  # old callers: calling what lookup returns still applies the variant
    assert isinstance(factory, functools.partial) and factory(views=5) == recipe(loss="alpha", views=5)


def test_options_take_the_field_types(scratch):
    recipe = make_recipe()
    built = build("attack", "t-alpha:lam=2,views=3,exact=true,name=42,temperature=0.5,mode=slow")
    assert built == recipe(loss="alpha", lam=2.0, views=3, exact=True, name="42", temperature=0.5, mode="slow")
    assert isinstance(built.lam, float) and isinstance(built.name, str)
    assert build("attack", "t-alpha:temperature=none,exact=False").temperature is None
    assert build("attack", "mse:stolen_arch=none").stolen_arch is None  # str | None: "none" is None
    assert build("attack", "t-beta", inner=Inner(depth=3)).inner == Inner(depth=3)  # configs as Python values


@pytest.mark.parametrize("spec, message", [
    ("t-alpha:volume=3", "attack 't-alpha' has no option 'volume'; accepted keys: exact, inner, lam, mode, name, "
                         "temperature, views"),
    ("t-alpha:lam=abc", "attack 't-alpha': lam expects a number, got 'abc'"),
    ("t-alpha:lam=nan", "attack 't-alpha': lam expects a number, got 'nan'"),
    ("t-alpha:views=2.5", "attack 't-alpha': views expects an integer, got '2.5'"),
    ("t-alpha:exact=maybe", "attack 't-alpha': exact expects true or false, got 'maybe'"),
    ("t-alpha:mode=warp", "attack 't-alpha': mode expects one of fast, slow, got 'warp'"),
    ("t-alpha:temperature=hot", "attack 't-alpha': temperature expects a number or none, got 'hot'"),
    ("t-alpha:inner=deep", "inner expects Inner (not settable from text) or none, got 'deep'"),
    ("t-alpha:loss=beta", "attack 't-alpha' fixes loss='alpha'"),
    ("t-alpha:lam=-1", "attack 't-alpha': lam must be non-negative"),
    ("t-alpha:lam", "expected key=value in 't-alpha:lam', got 'lam'"),
])
def test_bad_options_are_one_line_errors(scratch, spec, message):
    make_recipe()
    with pytest.raises(OptionError) as err:
        build("attack", spec)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_python_overrides_are_refused(scratch):
    make_recipe()
    with pytest.raises(OptionError, match="no option 'colour'"):
        build("attack", "t-alpha", colour="red")


@dataclass(kw_only=True)
class Target:
    loss: str
    lam: float = 1.0


def test_factories_still_build(scratch):
    def typed(**overrides: object) -> Target:
        return Target(loss="f", **overrides)

    def untyped(**overrides):
        return Target(loss="u", **overrides)

    registry.register_attack("t-typed")(typed)
    registry.register_attack("t-untyped")(untyped)
    assert build("attack", "t-typed:lam=3") == Target(loss="f", lam=3.0)
    with pytest.raises(OptionError, match="no option 'volume'; accepted keys: lam, loss"):
        build("attack", "t-typed:volume=1")  # keys read from the returned dataclass
    assert build("attack", "t-untyped:lam=0.5") == Target(loss="u", lam=0.5)
    with pytest.raises(OptionError, match="attack 't-untyped': .*volume"):
        build("attack", "t-untyped:volume=1")  # checked when called: the TypeError becomes one line


def test_real_recipes_build_with_options():
    attack = build("attack", "mse:standardize=true")
    assert attack.loss == "mse" and attack.standardize is True
    assert build("attack", "infonce").loss == "infonce"
    assert build("defense", "noise:sigma=0.2,relative=false").sigma == 0.2
    for spec, key in (("noise:sigma=abc", "sigma expects a number"), ("noise:mu=abc", "mu expects a number"),
                      ("noise:sigma=-1", "sigma"), ("mse:loss=infonce", "fixes loss='mse'")):
        with pytest.raises(OptionError, match=key):
            build("defense" if spec.startswith("noise") else "attack", spec)


def test_architectures_and_pools_resolve_here():
    assert registry.names("arch") == sorted(BACKBONES)
    assert registry.names("pool") == ["digits", "fashion-mnist"]
    assert registry.lookup("arch", "convnet") is BACKBONES["convnet"]
    assert build("arch", "convnet-small:in_channels=3") is not None
    with pytest.raises(OptionError, match="pool 'digits': size expects an integer, got 'big'"):
        build("pool", "digits:size=big")
    with pytest.raises(KeyError, match="unknown pool 'nowhere'; choose one of: digits, fashion-mnist"):
        build("pool", "nowhere")


def test_parse_component_guesses_types():
    assert parse_component("noise:sigma=0.2,relative=false,seed=3,mode=x") == (
        "noise", {"sigma": 0.2, "relative": False, "seed": 3, "mode": "x"})
    assert parse_component(" none ") == ("none", {})
