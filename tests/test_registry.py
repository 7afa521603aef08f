import pytest

from sslaudit import registry


def test_recipes_are_registered_by_name():
    assert "simclr" in registry.names("victim")
    assert {"mse", "infonce"} <= set(registry.names("attack"))
    assert {"none", "noise"} <= set(registry.names("defense"))


def test_unknown_name_lists_the_choices():
    with pytest.raises(KeyError, match="choose one of: .*mse"):
        registry.get_attack("telepathy")


def test_double_registration_is_refused():
    registry.register_defense("test-dup")(int)
    with pytest.raises(ValueError, match="twice"):
        registry.register_defense("test-dup")(float)
