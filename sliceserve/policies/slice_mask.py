"""SLICE's decode mask: pure functions over rates and column counts.

A mask has one row per selected request and C columns (C = the largest rate in the period);
row i holds v_i ones. One engine iteration runs one column: the batch is every row with a
one in it, and costs l(k) for k such rows. The period test asks whether the whole mask runs
within the period P:  T(mask) = sum over columns c of l(count_c) <= P.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

Latency = Callable[[int], float]  # l(k): decode latency (ms) of a batch of k rows


def decode_rate(period_ms: float, tpot_ms: float) -> int:
    """Decode iterations per period a request needs to keep its TPOT: ceil(P / tpot)."""
    return max(1, math.ceil(period_ms / tpot_ms - 1e-9))


def front_packed_period_ms(rates_desc: Sequence[int], latency: Latency) -> float:
    """T(B) of a front-packed mask whose rows are sorted by rate, descending.

    Column c holds every row with v > c, so with rows b = 1..n sorted by v descending:
    T = v_n * l(n) + sum_{j<n} (v_j - v_{j+1}) * l(j).
    """
    total = 0.0
    n = len(rates_desc)
    for j in range(n):
        nxt = rates_desc[j + 1] if j + 1 < n else 0
        total += (rates_desc[j] - nxt) * latency(j + 1)
    return total


def front_packed_columns(rates: Sequence[int]) -> list[int]:
    """Column counts of a front-packed mask (row i fills columns 0..v_i-1)."""
    width = max(rates, default=0)
    counts = [0] * width
    for v in rates:
        for c in range(v):
            counts[c] += 1
    return counts


def spread_row(rate: int, width: int, credit: int) -> list[int]:
    """Columns (0..width-1) where a row of `rate` ones is served in the next `width` iterations.

    Credit-based spreading (Bresenham): each iteration adds `rate` to the row's credit; when
    the credit reaches `width` the row is served and pays `width`. Integer arithmetic, so the
    gaps between a row's ones differ by at most one column. `credit` is the row's credit
    before the first of these iterations (a new row starts at width - rate: served at once).
    """
    columns = []
    for c in range(width):
        credit += rate
        if credit >= width:
            credit -= width
            columns.append(c)
    return columns


def period_ms(column_counts: Sequence[int], latency: Latency) -> float:
    """T(mask) from the mask's actual column counts; empty columns cost nothing."""
    counts = Counter(column_counts)
    counts.pop(0, None)
    return sum(latency(k) * n for k, n in counts.items())


def brute_force_period_ms(mask: Sequence[Sequence[int]], latency: Latency) -> float:
    """T(mask) summed column by column over a 0/1 matrix (the definition; for tests)."""
    width = max((len(row) for row in mask), default=0)
    total = 0.0
    for c in range(width):
        k = sum(1 for row in mask if c < len(row) and row[c])
        if k:
            total += latency(k)
    return total
