"""The shared statistics, each checked against a value worked out by hand or a direct computation."""

import numpy as np
import pytest

from unitscope.stats import benjamini_hochberg, bootstrap_interval, empirical_p, wilson_interval


def test_wilson_interval():
    low, high = wilson_interval(166, 200)  # by hand: centre 0.82378, half-width 0.05194
    assert low == pytest.approx(0.77184, abs=1e-4) and high == pytest.approx(0.87572, abs=1e-4)
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0) and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert all(np.isnan(wilson_interval(0, 0)))


def test_benjamini_hochberg_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 -> p * m / rank = 0.04, 0.06, 0.0533, 0.5 -> running minimum from the top
    np.testing.assert_allclose(benjamini_hochberg(p), [0.04, 0.0533333, 0.0533333, 0.5], rtol=1e-5)


def test_empirical_p_counts_the_selected_value_as_a_draw():
    null = np.arange(9.0)  # 0..8
    assert empirical_p(-1.0, null, "lower") == pytest.approx(1 / 10)  # nothing as low: never 0
    assert empirical_p(4.0, null, "lower") == pytest.approx(6 / 10)  # 0..4 are at most 4
    assert empirical_p(8.0, null, "higher") == pytest.approx(2 / 10)
    assert empirical_p(4.0 + 4.0, null, "two-sided") == pytest.approx(3 / 10)  # |x - 4| >= 4: 0 and 8


def test_bootstrap_interval_resamples_with_replacement():
    values = np.array([1.0, 2.0, 3.0, 10.0])
    low, high = bootstrap_interval(values, np.random.default_rng(0), 5000)
    index = np.random.default_rng(0).integers(0, 4, size=(5000, 4))  # the same draws, computed directly
    expected = np.percentile(values[index].mean(axis=1), [2.5, 97.5])
    assert (low, high) == pytest.approx(tuple(expected))
    assert 1.0 <= low < values.mean() < high <= 10.0
    median = bootstrap_interval(values, np.random.default_rng(0), 5000, statistic=np.median)
    assert median[0] >= 1.0 and median[1] <= 10.0 and median != (low, high)
    assert all(np.isnan(bootstrap_interval(np.array([]), np.random.default_rng(0))))
