"""Every docstring example in the package runs (``doctest``), under the names users import.

pytest's ``--doctest-modules`` would import ``attacks/x.py`` as ``attacks.x`` as well as
``sslaudit.attacks.x`` and register every recipe twice, so the modules are walked here by their
installed names instead. Examples that need data, a trained victim or minutes of CPU carry
``# doctest: +SKIP``; a module whose examples are all skipped says why in a comment on the line.
"""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import sslaudit

PACKAGES = ("sslaudit", "sslaudit.attacks", "sslaudit.victims", "sslaudit.defenses")  # the last three: package-dir
MODULES = sorted({m.name for pkg in PACKAGES
                  for m in pkgutil.walk_packages(importlib.import_module(pkg).__path__, pkg + ".")} | set(PACKAGES))
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=FLAGS, verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"


def test_every_recipe_package_is_walked() -> None:
    assert {"sslaudit.attacks.direct_extraction", "sslaudit.victims.simclr",
            "sslaudit.defenses.gaussian_noise", "sslaudit.nets.convnet"} <= set(MODULES)
