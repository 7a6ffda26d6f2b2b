"""SLICE as the paper and its authors' code describe it (`slice-paper`).

1. Rate v_i = ceil(P / tpot_i) decode iterations per period P.
2. Utility rate r_i = U_i * tpot_i; candidates (running and waiting) sorted by r_i, highest first.
3. Rows are added while the front-packed mask still runs within the period,
   T(B) = sum_c l(count_c) <= P; selection stops at the first request that does not fit and
   holds at most 16 rows. Re-run on every arrival and completion.
4. Execution scans the mask's columns, one iteration per column, and wraps. A newly selected
   request prefills in its first iteration. Unselected requests keep their KV and wait.

Not copied from the authors' code: the index shift and sign error of their period formula,
computing it before sorting, and indexing l past its table (the latency model extrapolates).
Departures needed to run on a real engine, none of which changes a selection: if not even the
first candidate fits the period it is selected alone (otherwise nothing would ever run); a
prompt larger than the iteration's token budget prefills in chunks; and when the KV cache runs
out, unselected requests are preempted by recompute to make room.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sliceserve.config import SchedulerConfig
from sliceserve.policies.base import (
    Budget,
    Decision,
    LatencySource,
    Policy,
    PolicyOptions,
    RequestView,
    SchedulerView,
    tokens_to_compute,
)
from sliceserve.policies.registry import register
from sliceserve.policies.slice_mask import Latency, decode_rate, front_packed_period_ms

PAPER_MAX_ROWS = 16


@dataclass(frozen=True)
class SlicePaperOptions(PolicyOptions):
    period_ratio: float = 1.0  # P = 1 s x period_ratio
    max_rows: int = PAPER_MAX_ROWS

    def __post_init__(self) -> None:
        if not self.period_ratio > 0:
            raise ValueError("period_ratio must be > 0")
        if self.max_rows < 1:
            raise ValueError("max_rows must be >= 1")


def paper_utility_rate(request: RequestView) -> float:
    return request.slo.utility * request.slo.tpot_ms


def paper_rank_key(request: RequestView) -> tuple[float, float, str]:
    """Utility rate, highest first; then arrival (and id, for a total order)."""
    return (-paper_utility_rate(request), request.arrival_s, request.request_id)


def select_paper(candidates: Iterable[RequestView], period_ms: float, latency: Latency,
                 max_rows: int) -> list[tuple[RequestView, int]]:
    """The paper's greedy selection: rows (request, v) in order of utility rate."""
    return select_ranked(sorted(candidates, key=paper_rank_key), period_ms, latency, max_rows)


def select_ranked(ranked: Iterable[RequestView], period_ms: float, latency: Latency,
                  max_rows: int) -> list[tuple[RequestView, int]]:
    """`select_paper` over candidates already in rank order."""
    selected: list[tuple[RequestView, int]] = []
    for request in ranked:
        if len(selected) >= max_rows:
            break
        v = decode_rate(period_ms, request.slo.tpot_ms)
        rates = sorted([s[1] for s in selected] + [v], reverse=True)
        if front_packed_period_ms(rates, latency) > period_ms:
            if not selected:
                selected.append((request, v))  # nothing fits: run the best alone
            break  # paper mode stops at the first misfit
        selected.append((request, v))
    return selected


@register
class SlicePaperPolicy(Policy):
    name = "slice-paper"
    Options = SlicePaperOptions
    options: SlicePaperOptions

    def __init__(self, options: SlicePaperOptions, latency_model: LatencySource,
                 config: SchedulerConfig) -> None:
        super().__init__(options, latency_model, config)
        self._dirty = True
        self._keys: list[tuple[float, float, str]] = []
        self._ranked: list[RequestView] = []  # unfinished requests in rank order
        self._rows: list[tuple[RequestView, int]] = []
        self._columns: list[list[RequestView]] = []
        self._column = 0

    @property
    def period_ms(self) -> float:
        return 1000.0 * self.options.period_ratio

    def on_arrival(self, request: RequestView, view: SchedulerView) -> None:
        # Candidates kept in rank order (the key never changes), so a re-plan walks the
        # top of the list instead of sorting every unfinished request.
        key = paper_rank_key(request)
        i = bisect.bisect_left(self._keys, key)
        self._keys.insert(i, key)
        self._ranked.insert(i, request)
        self._dirty = True

    def on_finish(self, request: RequestView, view: SchedulerView) -> None:
        i = bisect.bisect_left(self._keys, paper_rank_key(request))
        if i < len(self._keys) and self._ranked[i] is request:
            del self._keys[i]
            del self._ranked[i]
        self._dirty = True

    def replan(self, view: SchedulerView) -> bool:
        self._rows = select_ranked(self._ranked, self.period_ms,
                                   self.latency_model.decode_latency_ms, self.options.max_rows)
        # Front-packed: sorted by v descending, column c holds every row with v > c.
        rows = sorted(self._rows, key=lambda rv: -rv[1])
        width = rows[0][1] if rows else 0
        self._columns = [[r for r, v in rows if v > c] for c in range(width)]
        self._column = 0
        self._dirty = False
        return True

    def schedule(self, view: SchedulerView) -> Decision:
        if self._dirty:
            self.replan(view)
        if not self._columns:
            return Decision()
        column = self._columns[self._column]
        self._column = (self._column + 1) % len(self._columns)
        budget = Budget(view, max_rows=len(column))
        selected_ids = {r.request_id for r, _ in self._rows}
        in_column = {r.request_id for r in column}
        # Victims for memory, least valuable first: unselected, then selected rows outside
        # this column, then rows of this column not yet batched (newest admitted first).
        running = list(reversed(view.running))
        victims = [r for r in running if r.request_id not in selected_ids]
        victims += [r for r in running
                    if r.request_id in selected_ids and r.request_id not in in_column]
        victims += [r for r in running if r.request_id in in_column]
        preempt: list[RequestView] = []
        preempted: set[str] = set()
        batch: list[tuple[RequestView, int]] = []
        for request in column:
            if request.request_id in preempted:
                continue
            n = min(tokens_to_compute(request), budget.tokens_left)
            if n <= 0:
                break
            fitted = budget.take(request, n)
            while not fitted and victims:  # only KV can be short here
                victim = victims.pop(0)
                if victim is request or any(victim is r for r, _ in batch):
                    continue
                preempt.append(victim)
                preempted.add(victim.request_id)
                budget.release(victim)
                fitted = budget.take(request, n)
            if fitted:
                batch.append((request, n))
        return Decision(batch=batch, preempt=preempt)

    def state(self) -> dict[str, Any]:
        return {"selected": {r.request_id: v for r, v in self._rows},
                "columns": len(self._columns), "column": self._column}
