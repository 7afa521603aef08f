import math

import pytest
from scipy import stats

from sslaudit.stats import mean_interval, separated


def test_interval_is_the_student_t_half_width():
    values = [0.71, 0.80, 0.77, 0.74]
    n, mean = len(values), sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    expected = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)  # written out, not the module's code path
    got = mean_interval(values)
    assert got.mean == pytest.approx(mean) and got.half_width == pytest.approx(expected)
    assert got.low == pytest.approx(mean - expected) and got.n == 4


def test_three_seeds_use_4_30_standard_errors():
    got = mean_interval([0.0, 1.0, 2.0])
    assert got.half_width == pytest.approx(4.3027 * 1.0 / math.sqrt(3), rel=1e-4)


def test_separated_only_when_intervals_do_not_overlap():
    high, low = mean_interval([0.9, 0.91, 0.92]), mean_interval([0.5, 0.52, 0.51])
    assert separated(high, low) and not separated(low, high)
    wide = mean_interval([0.3, 0.95, 0.6])
    assert not separated(high, wide) and not separated(wide, low)
    assert not separated(mean_interval([0.9]), mean_interval([0.1]))  # one seed: no interval, no ordering


def test_one_value_has_no_interval_and_formats_as_the_mean():
    got = mean_interval([0.5])
    assert math.isnan(got.half_width) and got.format() == "0.50"
    assert mean_interval([0.80, 0.84, 0.82]).format() == "0.82 ± 0.05"
    with pytest.raises(ValueError):
        mean_interval([])
