"""How sure a results table is: the confidence interval of each mean test accuracy, and a
test of each activation against the best one, corrected for the number of comparisons.

Student's t is written out here (the regularised incomplete beta function) rather than taken
from scipy: with scipy installed, torchmetrics imports ``scipy.signal`` into every process that
imports Lightning, about a second of each run's start-up."""

from __future__ import annotations

import math
import statistics

_TINY = 1e-300

# the test behind a table's `p vs best` column, as the table states it
P_VS_BEST_TEST = (
    "Welch's two-sided t-test of the activation's test accuracies against the best mean's (same depth and "
    "same values of the other grouping keys), Holm-corrected for the number of activations compared with it"
)


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), by the continued fraction (modified Lentz), on the side where it converges fast."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - regularized_incomplete_beta(b, a, 1.0 - x)
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    fraction = d
    for m in range(1, 1000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` (not necessarily whole) degrees of freedom."""
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def student_t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile (0.5 < q < 1) of Student's t with ``df`` degrees of freedom (bisection)."""
    low, high = 0.0, 1.0
    while student_t_two_sided_p(high, df) > 2.0 * (1.0 - q):
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        low, high = (middle, high) if student_t_two_sided_p(middle, df) > 2.0 * (1.0 - q) else (low, middle)
    return (low + high) / 2.0


def welch_p_value(a: list[float], b: list[float]) -> float:
    """Welch's two-sided t-test of two samples (unequal variances); nan when both have none."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0.0:
        return math.nan
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return student_t_two_sided_p(t, df)


def mean_confidence_interval(values: list[float], level: float = 0.95) -> float | None:
    """Half-width of the ``level`` confidence interval of the mean of ``values`` (Student's t
    with n-1 degrees of freedom); None with fewer than two values."""
    if len(values) < 2:
        return None
    return student_t_quantile(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down correction of ``p_values`` (family-wise error over all of them)."""
    order = sorted(p_values, key=p_values.__getitem__)
    corrected, running = {}, 0.0
    for i, name in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * p_values[name]))
        corrected[name] = running
    return corrected


def p_values_vs_best(samples: dict[str, list[float]]) -> tuple[str | None, dict[str, float | None]]:
    """The name with the best mean, and each other's corrected p-value against it (see
    :data:`P_VS_BEST_TEST`); None where a test is not defined (fewer than two values on
    either side, or no variance on both)."""
    means = {name: statistics.fmean(values) for name, values in samples.items() if values}
    if not means:
        return None, {}
    best = max(means, key=means.__getitem__)
    raw: dict[str, float] = {}
    for name, values in samples.items():
        if name == best or len(values) < 2 or len(samples[best]) < 2:
            continue
        p = welch_p_value(values, samples[best])
        if math.isfinite(p):
            raw[name] = float(p)
    corrected = holm(raw)
    return best, {name: corrected.get(name) for name in samples if name != best}
