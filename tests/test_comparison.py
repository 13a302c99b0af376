"""The statistics beside a results table: confidence intervals and corrected tests."""

import math

import pytest

from actlab.comparison import (
    holm,
    mean_confidence_interval,
    p_values_vs_best,
    student_t_quantile,
    student_t_two_sided_p,
)


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


def test_students_t_matches_its_known_values():
    # df 1 is the Cauchy distribution: P(|T| >= t) = 1 - 2 atan(t) / pi
    for t in (0.1, 1.0, 3.0, 40.0):
        assert student_t_two_sided_p(t, 1) == pytest.approx(1 - 2 * math.atan(t) / math.pi, rel=1e-10)
    # reference values (R's 2 * pt(-t, df), qt(q, df)); Welch's degrees of freedom are not whole
    assert student_t_two_sided_p(2.0, 10) == pytest.approx(0.07338803477, rel=1e-9)
    assert student_t_two_sided_p(-4.5, 2.5) == pytest.approx(0.02989405901, rel=1e-9)
    assert student_t_two_sided_p(30.0, 6) == pytest.approx(9.099147044e-08, rel=1e-8)
    assert student_t_two_sided_p(0.0, 5) == 1.0
    assert student_t_quantile(0.975, 4) == pytest.approx(2.776445105, rel=1e-9)
    assert student_t_quantile(0.975, 3) == pytest.approx(3.182446305, rel=1e-9)
