"""SLO metrics: pure functions over plain per-request records (docs/SLICE.md, "Metrics").

One definition for the engine, the simulator and a live benchmark client: each turns what it
observed into `RequestRecord`s (engine clock or client clock) and calls these functions.

- TTFT = first token - arrival; E2E = last token - arrival ("task completion time").
- TPOT = mean time per output token after the first = (last - first) / (n - 1);
  a 1-token output has no inter-token time: its TPOT is defined as 0.
- Max gap = the longest time between two consecutive output tokens (0 for one token).
- Met (paper): completed and TTFT <= ttft and TPOT <= tpot and (E2E <= deadline, if set).
- Met strict: completed and TTFT <= ttft and token k (1-based) arrives no later than
  first + (k-1) tpot + tpot, i.e. a consumer reading at the SLO pace never stalls, and
  (E2E <= deadline, if set: a deadline is part of the request's SLO either way).
- Attainment = met / all arrived (rejected and aborted count as not met).
- Utility attainment = sum of utility over met / over all. Goodput = met / duration_s.
- Output tokens/s = all generated output tokens (unfinished requests' too) / duration_s.
- Latency statistics (TTFT, TPOT, E2E, max gap) are over completed requests only; the counts
  of rejected and aborted requests are reported next to them, and by cause (`failures`).
- The baselines' home metrics (Andes' QoE, SCORPIO's goodput and violation split) are in
  metrics/sota.py and part of every STATS object.
Comparisons allow `TOLERANCE_MS` of floating-point slack.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from sliceserve.request import SLO, Request, RequestStatus

Status = Literal["completed", "rejected", "aborted"]
STATUSES: tuple[str, ...] = ("completed", "rejected", "aborted")
TOLERANCE_MS = 1e-6
PERCENTILES = (50, 90, 99)
LATENCY_METRICS = ("ttft_ms", "tpot_ms", "e2e_ms", "max_gap_ms")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What is known about one request once it ended (times in seconds, one clock)."""

    request_id: str
    slo: SLO
    arrival_s: float
    token_times_s: tuple[float, ...]  # one per output token
    num_prompt_tokens: int
    status: Status
    finish_reason: str | None = None  # "stop", "length", "abort", "rejected"
    finish_code: str | None = None  # machine-readable cause of a rejection or abort

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"record status must be one of {', '.join(STATUSES)}, "
                             f"got {self.status!r}")

    @classmethod
    def from_request(cls, request: Request) -> RequestRecord:
        if not request.status.is_finished:
            raise ValueError(f"request {request.request_id!r} has not finished "
                             f"({request.status.value})")
        return cls(request.request_id, request.slo, request.arrival_s,
                   tuple(request.token_times_s), request.num_prompt_tokens,
                   _STATUS_NAMES[request.status],
                   None if request.finish_reason is None else str(request.finish_reason),
                   request.finish_code)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_times_s)

    @property
    def completed(self) -> bool:
        return self.status == "completed"


_STATUS_NAMES: dict[RequestStatus, Status] = {
    RequestStatus.COMPLETED: "completed",
    RequestStatus.REJECTED: "rejected",
    RequestStatus.ABORTED: "aborted",
}


# --- per request ---

def ttft_ms(record: RequestRecord) -> float | None:
    times = record.token_times_s
    return (times[0] - record.arrival_s) * 1000.0 if times else None


def tpot_ms(record: RequestRecord) -> float | None:
    times = record.token_times_s
    if not times:
        return None
    if len(times) == 1:
        return 0.0
    return (times[-1] - times[0]) * 1000.0 / (len(times) - 1)


def e2e_ms(record: RequestRecord) -> float | None:
    times = record.token_times_s
    return (times[-1] - record.arrival_s) * 1000.0 if times else None


def max_gap_ms(record: RequestRecord) -> float | None:
    times = record.token_times_s
    if not times:
        return None
    return max((b - a for a, b in zip(times, times[1:])), default=0.0) * 1000.0


def _ttft_and_deadline_met(record: RequestRecord) -> bool:
    if not record.completed or not record.token_times_s:
        return False
    slo = record.slo
    if ttft_ms(record) > slo.ttft_ms + TOLERANCE_MS:  # type: ignore[operator]
        return False
    return slo.deadline_ms is None or e2e_ms(record) <= slo.deadline_ms + TOLERANCE_MS  # type: ignore[operator]


def is_met(record: RequestRecord) -> bool:
    """The paper's definition: TTFT, mean TPOT and (if set) deadline within the SLO."""
    return (_ttft_and_deadline_met(record)
            and tpot_ms(record) <= record.slo.tpot_ms + TOLERANCE_MS)  # type: ignore[operator]


def missed_objectives(record: RequestRecord) -> list[str]:
    """What a request missed, by the paper's definition: "completion" (rejected or aborted),
    then those of "ttft", "tpot" (mean), "deadline" (E2E) whose measured value is over its
    objective (a request without tokens has none measured). Empty exactly when `is_met`."""
    return missed_from(record.slo, record.completed, ttft_ms(record), tpot_ms(record),
                       e2e_ms(record))


def missed_from(slo: SLO, completed: bool, ttft: float | None, tpot: float | None,
                e2e: float | None) -> list[str]:
    """`missed_objectives` from the measured values (ms; None: not measured)."""
    missed = [] if completed else ["completion"]
    if completed and ttft is None:
        missed.append("ttft")  # completed without a token: nothing arrived in time
    if ttft is not None and ttft > slo.ttft_ms + TOLERANCE_MS:
        missed.append("ttft")
    if tpot is not None and tpot > slo.tpot_ms + TOLERANCE_MS:
        missed.append("tpot")
    if (slo.deadline_ms is not None and e2e is not None
            and e2e > slo.deadline_ms + TOLERANCE_MS):
        missed.append("deadline")
    return missed


def is_met_strict(record: RequestRecord) -> bool:
    """Token k (1-based) no later than first + k tpot: a consumer at the SLO pace never stalls."""
    if not _ttft_and_deadline_met(record):
        return False
    times = record.token_times_s
    first = times[0]
    tpot_s = record.slo.tpot_ms / 1000.0
    slack_s = TOLERANCE_MS / 1000.0
    return all(t <= first + k * tpot_s + slack_s for k, t in enumerate(times, start=1))


# --- over a set of requests ---

def slo_attainment(records: Sequence[RequestRecord], strict: bool = False) -> float | None:
    if not records:
        return None
    met = is_met_strict if strict else is_met
    return sum(1 for r in records if met(r)) / len(records)


def utility_attainment(records: Sequence[RequestRecord]) -> float | None:
    total = sum(r.slo.utility for r in records)
    if total <= 0:
        return None
    return sum(r.slo.utility for r in records if is_met(r)) / total


def goodput_rps(records: Sequence[RequestRecord], duration_s: float) -> float | None:
    if duration_s <= 0:
        return None
    return sum(1 for r in records if is_met(r)) / duration_s


def output_tok_s(records: Sequence[RequestRecord], duration_s: float) -> float | None:
    if duration_s <= 0:
        return None
    return sum(r.num_output_tokens for r in records) / duration_s


def latency_stats(values: Iterable[float | None]) -> dict[str, float | None]:
    """mean, p50, p90, p99 (linear interpolation); all None for an empty set."""
    data = [v for v in values if v is not None]
    if not data:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    array = np.asarray(data, dtype=float)
    out: dict[str, float | None] = {"mean": float(array.mean())}
    for p, value in zip(PERCENTILES, np.percentile(array, PERCENTILES), strict=True):
        out[f"p{p}"] = float(value)
    return out


_PER_REQUEST = {"ttft_ms": ttft_ms, "tpot_ms": tpot_ms, "e2e_ms": e2e_ms,
                "max_gap_ms": max_gap_ms}


def compute_stats(records: Sequence[RequestRecord], duration_s: float) -> dict[str, Any]:
    """The STATS object of docs/RESULTS.md, keys in its order."""
    completed = [r for r in records if r.completed]
    stats: dict[str, Any] = {
        "n": len(records),
        "completed": len(completed),
        "rejected": sum(1 for r in records if r.status == "rejected"),
        "aborted": sum(1 for r in records if r.status == "aborted"),
        "slo_attainment": slo_attainment(records),
        "slo_attainment_strict": slo_attainment(records, strict=True),
        "utility_attainment": utility_attainment(records),
        "goodput_rps": goodput_rps(records, duration_s),
        "output_tok_s": output_tok_s(records, duration_s),
    }
    for name in LATENCY_METRICS:
        stats[name] = latency_stats(_PER_REQUEST[name](r) for r in completed)
    stats["failures"] = failure_counts(records)
    # Added after the v1 keys (readers ignore keys they do not know): the baselines' own
    # metrics, Andes' QoE and SCORPIO's goodput and violation split (metrics/sota.py).
    from sliceserve.metrics.sota import sota_stats  # it builds on this module

    stats.update(sota_stats(records, duration_s))
    return stats


def failure_counts(records: Sequence[RequestRecord]) -> dict[str, int]:
    """Requests not completed, by cause: their `finish_code`, else their status."""
    counts: dict[str, int] = {}
    for record in records:
        if not record.completed:
            key = record.finish_code or record.status
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def compute_class_stats(records: Sequence[RequestRecord], duration_s: float,
                        class_order: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """STATS per SLO class: the classes of `class_order` (even if empty), then any others."""
    by_class: dict[str, list[RequestRecord]] = {name: [] for name in class_order}
    for record in records:
        by_class.setdefault(record.slo.slo_class, []).append(record)
    return {name: compute_stats(group, duration_s) for name, group in by_class.items()}
