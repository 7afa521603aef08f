"""Attack/defence regression tests for an encoder you serve: copy this file into your repository.

The sslaudit pytest plugin (installed with sslaudit) supplies the fixtures. Out of the box they audit
sslaudit's shipped tiny SimCLR victim; to audit your own encoder, override ``sslaudit_victim`` in your
``conftest.py``::

    @pytest.fixture(scope="session")
    def sslaudit_victim():
        from sslaudit.models import InputSpec
        from sslaudit.zoo import resolve_victim
        return resolve_victim("my_package.models:encoder", weights="enc.safetensors",
                              native=InputSpec(channels=3, size=32))

Run: ``python -m pytest -q examples/test_my_encoder.py`` (add ``--sslaudit-report audit.html`` for a report
of every steal). The first run of a regression check writes its stored values beside this file
(``test_my_encoder/<test name>.json``) and fails once; commit that file. ``--sslaudit-regen`` rewrites
stored values that moved, after you have decided the move is acceptable.

The sizes here are tiny so the file runs in about a minute on two CPU cores: 500 queries and a
10-epoch schedule (the MSE recipe's own is 20), probes on 1,000 labelled images. With the full schedule
and 5,000 queries the shipped victim gives up ~0.9 of its gain; raise QUERIES and EPOCHS (and your
thresholds) to what your threat model says a thief would spend.
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.sslaudit_audit

QUERIES, EPOCHS = 500, 10
DEFENSE = "noise:sigma=0.5"


def test_a_cheap_thief_gets_less_than_half_the_gain(sslaudit_steal):
    """Threshold: with 500 queries ($0.50) a thief recovers less than half of what the encoder adds over
    a random one (kNN and full-label linear probe)."""
    result = sslaudit_steal(attack="mse", queries=QUERIES, epochs=EPOCHS)
    assert result.queries.sent == QUERIES and result.queries.cost == pytest.approx(0.5)
    assert result.stolen.gain_recovered.knn < 0.5
    assert result.stolen.gain_recovered.linear_full < 0.5


def test_noise_defence_no_leakier_and_no_costlier(sslaudit_steal, sslaudit_regression):
    """Regression: through the noise defence, the thief's gain and fidelity may not rise, and an honest
    user's utility may not fall, by more than the tolerance from the stored values."""
    result = sslaudit_steal(attack="mse", queries=QUERIES, defenses=(DEFENSE,), epochs=EPOCHS, honest=True)
    stolen, utility = result.stolen, result.honest.utility
    assert utility.linear_full > 0.85  # the defence keeps the API useful for honest users
    sslaudit_regression.check(
        "mse-noise",
        {"gain_knn": stolen.gain_recovered.knn, "gain_linear_full": stolen.gain_recovered.linear_full,
         "fidelity_cosine": stolen.fidelity.cosine,
         "honest_knn": utility.knn, "honest_linear_full": utility.linear_full},
        tolerances={"gain_linear_full": dict(atol=0.1)},  # victim and floor are 9 points apart here: noisy
        higher_is_worse={"gain_knn", "gain_linear_full", "fidelity_cosine"},
        lower_is_worse={"honest_knn", "honest_linear_full"},
    )
