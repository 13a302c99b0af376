"""How sure a results table is: the confidence interval of each mean test accuracy, and a
test of each activation against the best one, corrected for the number of comparisons."""

from __future__ import annotations

import math
import statistics

# the test behind a table's `p vs best` column, as the table states it
P_VS_BEST_TEST = (
    "Welch's two-sided t-test of the activation's test accuracies against the best mean's (same depth), "
    "Holm-corrected for the number of activations compared with it"
)


def mean_confidence_interval(values: list[float], level: float = 0.95) -> float | None:
    """Half-width of the ``level`` confidence interval of the mean of ``values`` (Student's t
    with n-1 degrees of freedom); None with fewer than two values."""
    from scipy import stats

    if len(values) < 2:
        return None
    return float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


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
    from scipy import stats

    means = {name: statistics.fmean(values) for name, values in samples.items() if values}
    if not means:
        return None, {}
    best = max(means, key=means.__getitem__)
    raw: dict[str, float] = {}
    for name, values in samples.items():
        if name == best or len(values) < 2 or len(samples[best]) < 2:
            continue
        p = stats.ttest_ind(values, samples[best], equal_var=False).pvalue
        if math.isfinite(p):
            raw[name] = float(p)
    corrected = holm(raw)
    return best, {name: corrected.get(name) for name in samples if name != best}
