"""The statistics beside a results table: confidence intervals and corrected tests."""

import pytest

from actlab.comparison import holm, mean_confidence_interval, p_values_vs_best


def test_confidence_interval_of_a_mean_is_students():
    # mean 2.5, sd 1.291, n 4: t(0.975, 3) = 3.1824
    assert mean_confidence_interval([1.0, 2.0, 3.0, 4.0]) == pytest.approx(3.1824 * 1.2910 / 2, rel=1e-4)
    assert mean_confidence_interval([0.9]) is None


def test_holm_steps_down_and_stays_monotone():
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert holm({"a": 0.6, "b": 0.7}) == pytest.approx({"a": 1.0, "b": 1.0})


def test_each_activation_is_tested_against_the_best_mean():
    best, p = p_values_vs_best({"x": [3.0, 4.0, 5.0, 6.0], "y": [1.0, 2.0, 3.0, 4.0], "z": [3.1, 4.2, 4.9, 6.1],
                                "w": [4.0]})  # fmt: skip
    assert best == "z"
    # Welch's t-test, y against z: t = -2.302, 6.0 df -> p = 0.06094; x against z: p = 0.9364; two comparisons (Holm)
    assert p["y"] == pytest.approx(2 * 0.06094, rel=1e-3) and p["x"] == pytest.approx(0.9364, rel=1e-3)
    assert p["w"] is None  # one run: no test
