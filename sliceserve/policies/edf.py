"""EDF: earliest deadline first, on each request's next-token deadline.

The deadline of a request's first token is `arrival + ttft`; each later token is due one
`tpot` after the previous deadline, so the (k+1)-th token is due at
`ttft_deadline + k * tpot` (`next_token_deadline_s`). The deadlines are the SLO's pace, not
the observed token times: a request that fell behind stays urgent.

Each iteration takes up to `max_batch_size` requests, running or waiting, in deadline order;
a prefill runs in chunks within the token budget. Running requests left out keep their KV
cache and wait. When a request's chunk does not fit the free KV blocks, the running request
with the latest deadline is preempted (recompute) if its deadline is later than the one that
needs the memory; otherwise the request is skipped. A waiting request skipped this way closes
admission for the iteration (later waiting requests must not take the memory it waits for,
or large prompts would starve); running requests due later still compute.
`preempt_to_admit=False` lets only running requests preempt (less thrashing under tight
memory, less strict EDF).
"""

from __future__ import annotations

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
from sliceserve.policies.queues import RequestHeap
from sliceserve.policies.registry import register
from sliceserve.request import RequestStatus

DeadlineKey = tuple[float, float, str]


def next_token_deadline_s(request: RequestView) -> float:
    """When the request's next output token is due at its SLO pace."""
    return request.ttft_deadline_s + request.num_output_tokens * request.slo.tpot_ms / 1000.0


class _Descending:
    """A string that sorts backwards (for the latest-first key)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __lt__(self, other: _Descending) -> bool:
        return self.text > other.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.text == other.text

    def __hash__(self) -> int:
        return hash(self.text)


def latest_first_key(request: RequestView) -> tuple[float, float, _Descending]:
    """`deadline_key` reversed: the request due last comes first."""
    return (-next_token_deadline_s(request), -request.arrival_s,
            _Descending(request.request_id))


def deadline_key(request: RequestView) -> DeadlineKey:
    """The one ordering key of EDF: next-token deadline, then arrival, then id (a total
    order, so that 'later than' always names a victim other than the request itself)."""
    return (next_token_deadline_s(request), request.arrival_s, request.request_id)


@dataclass(frozen=True)
class EdfOptions(PolicyOptions):
    max_batch_size: int = 8
    # May a waiting request preempt running ones to get memory? Strict EDF says yes; with
    # recompute preemption under tight memory this can thrash (a preempted request's deadline
    # stays put while the one that took its memory moves on by one tpot per token).
    preempt_to_admit: bool = True

    def __post_init__(self) -> None:
        if type(self.max_batch_size) is not int or self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an integer >= 1, got {self.max_batch_size!r}")
        if not isinstance(self.preempt_to_admit, bool):
            raise ValueError(f"preempt_to_admit must be a bool, got {self.preempt_to_admit!r}")


@register
class EdfPolicy(Policy):
    """Keeps the running and the waiting requests in two heaps by `deadline_key`, merged
    when scanning.

    A key changes only when its request gets a token, i.e. only for requests of the previous
    batch: those are re-keyed at the start of the next decision. So a decision costs
    O(batch * log n), not a sort of every request. The heaps follow the scheduler through the
    hooks: arrivals and preemptions go to the waiting heap, finishes leave both, and the
    batch's members (admitted or not) are re-filed by their status at the next decision.
    """

    name = "edf"
    Options = EdfOptions
    options: EdfOptions

    def __init__(self, options: PolicyOptions, latency_model: LatencySource,
                 config: SchedulerConfig) -> None:
        super().__init__(options, latency_model, config)
        self._running: RequestHeap[DeadlineKey] = RequestHeap()
        # The same running requests, latest deadline first.
        self._latest: RequestHeap[tuple[float, float, _Descending]] = RequestHeap()
        self._waiting: RequestHeap[DeadlineKey] = RequestHeap()
        self._last_batch: dict[str, RequestView] = {}  # off the heaps until re-keyed

    def on_arrival(self, request: RequestView, view: SchedulerView) -> None:
        self._waiting.push(request, deadline_key(request))

    def on_preempt(self, request: RequestView, view: SchedulerView) -> None:
        self._discard_running(request.request_id)
        self._waiting.push(request, deadline_key(request))

    def on_finish(self, request: RequestView, view: SchedulerView) -> None:
        self._discard_running(request.request_id)
        self._waiting.discard(request.request_id)
        self._last_batch.pop(request.request_id, None)

    def schedule(self, view: SchedulerView) -> Decision:
        self._refresh()
        running, waiting = self._running, self._waiting
        budget = Budget(view, self.options.max_batch_size)
        batch: list[tuple[RequestView, int]] = []
        preempted: list[RequestView] = []
        passed: list[tuple[RequestHeap[DeadlineKey], RequestView]] = []  # popped, unscheduled
        scheduled: set[str] = set()
        gone: set[str] = set()  # preempted by this decision
        skipped: list[RequestView] = []  # taken off the latest-first heap, not preempted
        admitting = True
        while budget.rows_left > 0 and budget.tokens_left > 0:
            heap = self._earliest(running, waiting if admitting else None)
            if heap is None:
                break
            request = heap.pop()
            assert request is not None  # _earliest saw it
            if request.request_id in gone:
                passed.append((heap, request))
                continue
            num_new = min(tokens_to_compute(request), budget.tokens_left)
            may_preempt = heap is running or self.options.preempt_to_admit
            if budget.take(request, num_new) or (may_preempt and self._make_room(
                    request, num_new, budget, scheduled, gone, preempted, skipped)):
                batch.append((request, num_new))
                scheduled.add(request.request_id)
                self._last_batch[request.request_id] = request
                continue
            passed.append((heap, request))
            if heap is waiting:
                # No overtaking for memory: a later waiting request must not take what this
                # one waits for. Running requests due later may still compute.
                admitting = False
        for heap, request in passed:
            if heap is running:
                self._push_running(request)
            else:
                heap.push(request, deadline_key(request))
        for request in skipped:
            self._latest.push(request, latest_first_key(request))
        return Decision(batch=batch, preempt=preempted)

    @staticmethod
    def _earliest(running: RequestHeap[DeadlineKey], waiting: RequestHeap[DeadlineKey] | None,
                  ) -> RequestHeap[DeadlineKey] | None:
        """The heap whose next request is due first (None when both are empty)."""
        r = running.peek()
        w = waiting.peek() if waiting is not None else None
        if w is None:
            return None if r is None else running
        if r is None or w[0] < r[0]:
            return waiting
        return running

    def _make_room(self, request: RequestView, num_new: int, budget: Budget,
                   scheduled: set[str], gone: set[str], preempted: list[RequestView],
                   skipped: list[RequestView]) -> bool:
        """Preempt running requests due later than `request`, latest first, until its
        blocks fit. False (and nothing more preempted) once no later one is left."""
        key = deadline_key(request)
        latest = self._latest
        while (top := latest.peek()) is not None:
            victim = top[1]
            if deadline_key(victim) <= key:
                return False
            latest.pop()
            if victim.request_id in scheduled or victim.request_id in gone:
                skipped.append(victim)
                continue
            gone.add(victim.request_id)
            preempted.append(victim)
            budget.release(victim)
            if budget.take(request, num_new):
                return True
        return False

    def _push_running(self, request: RequestView) -> None:
        self._running.push(request, deadline_key(request))
        self._latest.push(request, latest_first_key(request))

    def _discard_running(self, request_id: str) -> None:
        self._running.discard(request_id)
        self._latest.discard(request_id)

    def _refresh(self) -> None:
        """Re-key the previous batch (its members got a token, or were admitted)."""
        for request in self._last_batch.values():
            if request.status is RequestStatus.RUNNING:
                self._push_running(request)
            else:
                self._waiting.push(request, deadline_key(request))
        self._last_batch.clear()

    def state(self) -> dict[str, Any]:
        return {"num_running": len(self._running), "num_waiting": len(self._waiting)}
