"""The home metrics of the SLO-aware baselines (docs/shared BASELINES.md): pure functions over
`RequestRecord`s, beside the project's own in slo.py.

Andes' quality of experience (QoE) of one request, with expected TTFT `T0 = ttft_ms` and pace
`L = tpot_ms`: token i (0-based, times from arrival) is expected at `e_i = T0 + i L`; a reader
digests tokens no faster than L, so token i is digested at `d_0 = t_0`,
`d_i = max(t_i, d_{i-1} + L)`; with `T_end = d_{n-1} + L`,

    QoE = min(1, 1 - sum_i max(0, d_i - e_i) / sum_i (T_end - e_i))

(1 when no token is digested late; the denominator is then positive whenever the numerator
is). A request that did not complete (rejected, aborted) has QoE 0, as it counts as not met
everywhere else. Reported: the mean over all arrived requests and the share with QoE >= 0.99.

SCORPIO's goodput counts requests that completed within their TTFT and mean TPOT (its
SLOs have no deadline) per second; its violation split sorts the others: TTFT only, TPOT
only, both, and unserved (rejected or aborted: no tokens to judge).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sliceserve.metrics.slo import TOLERANCE_MS, RequestRecord, tpot_ms, ttft_ms

QOE_GOOD = 0.99
VIOLATION_KINDS = ("ttft_only", "tpot_only", "both", "unserved")


def andes_qoe(record: RequestRecord) -> float:
    """Andes' QoE of one request, in [0, 1] (0 when it did not complete)."""
    times = record.token_times_s
    if not record.completed or not times:
        return 0.0
    t0, pace = record.slo.ttft_ms, record.slo.tpot_ms
    arrival = record.arrival_s
    digested: list[float] = []
    last = -float("inf")
    for t_s in times:
        last = max((t_s - arrival) * 1000.0, last + pace)
        digested.append(last)
    delay = sum(max(0.0, d - (t0 + i * pace)) for i, d in enumerate(digested))
    if delay <= TOLERANCE_MS:
        return 1.0
    t_end = digested[-1] + pace
    whole = sum(t_end - (t0 + i * pace) for i in range(len(digested)))
    return max(0.0, min(1.0, 1.0 - delay / whole))


def qoe_mean(records: Sequence[RequestRecord]) -> float | None:
    if not records:
        return None
    return sum(andes_qoe(r) for r in records) / len(records)


def qoe_share(records: Sequence[RequestRecord], threshold: float = QOE_GOOD) -> float | None:
    """Share of requests whose QoE is at least `threshold`."""
    if not records:
        return None
    return sum(1 for r in records if andes_qoe(r) >= threshold) / len(records)


def _ttft_met(record: RequestRecord) -> bool:
    return ttft_ms(record) <= record.slo.ttft_ms + TOLERANCE_MS  # type: ignore[operator]


def _tpot_met(record: RequestRecord) -> bool:
    return tpot_ms(record) <= record.slo.tpot_ms + TOLERANCE_MS  # type: ignore[operator]


def violation_kind(record: RequestRecord) -> str | None:
    """Which of SCORPIO's SLOs a request missed (None: it met both)."""
    if not record.completed or not record.token_times_s:
        return "unserved"
    ttft_ok, tpot_ok = _ttft_met(record), _tpot_met(record)
    if ttft_ok and tpot_ok:
        return None
    if tpot_ok:
        return "ttft_only"
    return "tpot_only" if ttft_ok else "both"


def scorpio_goodput_rps(records: Sequence[RequestRecord], duration_s: float) -> float | None:
    """Requests that completed within both TTFT and mean TPOT, per second."""
    if duration_s <= 0:
        return None
    return sum(1 for r in records if violation_kind(r) is None) / duration_s


def violations(records: Sequence[RequestRecord]) -> dict[str, int]:
    """Counts of SCORPIO's violation kinds, keys in `VIOLATION_KINDS` order."""
    counts = dict.fromkeys(VIOLATION_KINDS, 0)
    for record in records:
        kind = violation_kind(record)
        if kind is not None:
            counts[kind] += 1
    return counts


def sota_stats(records: Sequence[RequestRecord], duration_s: float) -> dict[str, Any]:
    """The keys these metrics add to a STATS object (docs/RESULTS.md), in order."""
    return {
        "qoe_mean": qoe_mean(records),
        "qoe_share_099": qoe_share(records),
        "scorpio_goodput_rps": scorpio_goodput_rps(records, duration_s),
        "violations": violations(records),
    }
