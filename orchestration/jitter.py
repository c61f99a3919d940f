"""Jittered retry delays: Prefect's clamped Poisson interval.

A delay is drawn from the exponential distribution whose mean is the configured delay, cut to a
window around that mean: the top of the window is `(1 + factor)` times the mean, the bottom
`-log2(1 - 2**-(1 + factor))` times it (Prefect's choice of a bottom that keeps the drawn delays
centred near the mean). The draw inverts the CDF at a probability picked uniformly between the
CDF's values at the two bounds, so every delay falls inside the window.
"""

import math
import random
from collections.abc import Callable

SMALLEST_TAIL = 1e-10
"""The inverse CDF is evaluated at no less than this tail mass (log(0) is undefined)."""

Uniform = Callable[[float, float], float]


def clamped_poisson_interval(
    mean_seconds: float, clamping_factor: float, uniform: Uniform = random.uniform
) -> float:
    """A delay near `mean_seconds`, between `lower_bound_multiple(1 + clamping_factor)` and
    `1 + clamping_factor` times it; 0.0 for a mean of zero or less.

    `uniform(a, b)` draws the probability to invert (injectable so tests can pin it).
    """
    if clamping_factor <= 0:
        raise ValueError("`clamping_factor` must be >= 0.")
    if mean_seconds <= 0:
        return 0.0
    upper_multiple = 1 + clamping_factor
    lowest = _exponential_cdf(mean_seconds * lower_bound_multiple(upper_multiple), mean_seconds)
    highest = _exponential_cdf(mean_seconds * upper_multiple, mean_seconds)
    tail = max(1 - uniform(lowest, highest), SMALLEST_TAIL)
    return -math.log(tail) * mean_seconds


def lower_bound_multiple(upper_multiple: float) -> float:
    """For a window topped at `upper_multiple` times the mean, the multiple of the mean at which
    it starts: -log2(1 - 2**-upper_multiple). It tends to 0 as the window widens."""
    return -math.log2(1 - 2.0**-upper_multiple)


def _exponential_cdf(x: float, mean: float) -> float:
    return 1 - math.exp(-x / mean)
