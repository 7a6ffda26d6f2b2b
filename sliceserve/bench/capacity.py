"""Capacity at the SLO: the highest arrival rate at which a system keeps >= 90% attainment.

Found by bisection over the rate, each probe being the median attainment over several seeds
(one run is too noisy to decide on): start from a bracket [low, high] where low meets the
threshold and high does not (e.g. two neighbouring points of a sweep), halve it `steps`
times. The answer is the highest rate that was seen to meet the threshold, with the bracket
it ended in. Attainment need not fall monotonically with the rate for every seed; the median
over seeds makes it close enough, and the bracket says how sure the answer is.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

THRESHOLD = 0.9

Measure = Callable[[float], Sequence[float]]  # rate -> attainment of each seed


@dataclass
class CapacityResult:
    capacity_rps: float | None  # None: even `low` missed the threshold
    bracket: tuple[float, float]  # the capacity lies in [low, high)
    probes: list[tuple[float, float]] = field(default_factory=list)  # (rate, median)


def bracket_from_points(points: Sequence[tuple[float, float]], threshold: float = THRESHOLD
                        ) -> tuple[float, float] | None:
    """From (rate, median attainment) points: the last rate meeting the threshold before the
    first that misses it, and that one; None when no point meets it or none misses it."""
    ordered = sorted(points)
    for (rate_ok, ok), (rate_bad, bad) in zip(ordered, ordered[1:]):
        if ok >= threshold > bad:
            return rate_ok, rate_bad
    return None


def bisect_capacity(measure: Measure, low: float, high: float, *, steps: int = 4,
                    threshold: float = THRESHOLD, check_ends: bool = False) -> CapacityResult:
    """Bisect [low, high] (low meets the threshold, high does not) `steps` times."""
    if not 0 < low < high:
        raise ValueError(f"capacity bracket must have 0 < low < high, got [{low}, {high}]")
    probes: list[tuple[float, float]] = []

    def median_at(rate: float) -> float:
        value = statistics.median(measure(rate))
        probes.append((rate, value))
        return value

    if check_ends:
        if median_at(low) < threshold:
            return CapacityResult(None, (0.0, low), probes)
        if median_at(high) >= threshold:
            return CapacityResult(high, (high, float("inf")), probes)
    for _ in range(steps):
        mid = (low + high) / 2
        if median_at(mid) >= threshold:
            low = mid
        else:
            high = mid
    return CapacityResult(low, (low, high), probes)
