"""vLLM v1's default scheduler, its priority variant, and that variant with vLLM issue 40004 fixed.

Each iteration has a token budget (`max_num_batched_tokens`). Running requests go first, in the
order they were admitted: one decode token each, or the next chunk of a chunked prefill. When
a running request needs a new KV block and none is free, a victim is preempted by recompute
(`victim`), repeatedly, until the block fits; a victim already scheduled in this iteration is
taken out of the batch again (its tokens and blocks go back to the budget); when the victim is
the request itself, the running pass ends. Then, only if nothing was preempted, waiting
requests are admitted in queue order while their chunk fits the tokens, the rows and the free
KV blocks; the first one that does not fit stops admission (no overtaking). At most
`max_batch_size` requests run at once (vLLM's `max_num_seqs`).

- `vllm`: FCFS. Waiting by arrival; the victim is the last admitted running request.
- `vllm-priority`: waiting is a heap on `priority_key` = (priority, arrival), lower first;
  running stays in admission order; the victim is the running request with the largest key.
  A full batch never preempts for a better waiting request (vLLM issue 40004: "priority
  scheduling only evicts on resource shortage"); this matches `vllm/v1/core/sched/scheduler.py`.
- `vllm-priority-preempt`: `vllm-priority` with 40004 fixed as its proposed patches do: when the
  rows are full, the running request with the largest key is preempted for a waiting request
  of strictly better priority (a smaller value). KV shortage at admission still stops it.

Priorities are the requests' own (`RequestView.priority`); the workloads give each SLO class
its utility rank (highest utility 0) unless a class or trace line sets one.
"""

from __future__ import annotations

from collections.abc import Iterator
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


@dataclass(frozen=True)
class VllmOptions(PolicyOptions):
    max_batch_size: int = 8  # requests running at once (vLLM's max_num_seqs)

    def __post_init__(self) -> None:
        if type(self.max_batch_size) is not int or self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an integer >= 1, got {self.max_batch_size!r}")


def priority_key(request: RequestView) -> tuple[int, float]:
    """The one ordering key of `vllm-priority`'s queues: lower is served first."""
    return (request.priority, request.arrival_s)


@register
class VllmPolicy(Policy):
    name = "vllm"
    Options = VllmOptions
    options: VllmOptions

    # --- what the variants change ---
    def victim(self, running: list[RequestView]) -> RequestView:
        """The running request to preempt on KV shortage (FCFS: the last admitted)."""
        return running[-1]

    def waiting_in_order(self, view: SchedulerView) -> Iterator[RequestView]:
        """Waiting requests in the order they may be admitted (the caller stops at the
        first misfit)."""
        return iter(view.waiting)  # the scheduler keeps them by arrival

    def displaces(self, request: RequestView, victim: RequestView) -> bool:
        """May waiting `request` preempt running `victim` when the rows are full?"""
        return False

    def admission_done(self) -> None:
        """Called once admission has looked at what it needed of `waiting_in_order`."""

    # --- the shared schedule ---
    def schedule(self, view: SchedulerView) -> Decision:
        max_rows = min(self.options.max_batch_size, view.config.max_num_seqs)
        budget = Budget(view, max_rows)
        running = list(view.running)  # admission order
        scheduled: dict[str, tuple[RequestView, int]] = {}  # insertion order = batch order
        preempted: list[RequestView] = []
        i = 0
        while i < len(running) and budget.tokens_left > 0:
            request = running[i]
            num_new = min(tokens_to_compute(request), budget.tokens_left)
            fitted = True
            while not budget.take(request, num_new):
                victim = self.victim(running)
                if running.index(victim) < i:
                    i -= 1  # it was served before this one
                self._preempt(victim, running, scheduled, budget, preempted)
                if victim is request:
                    fitted = False
                    break
            if not fitted:
                break  # it preempted itself: no more requests to preempt for
            scheduled[request.request_id] = (request, num_new)
            i += 1
        if not preempted:  # as vLLM: no admissions in an iteration that had to preempt
            self._admit(view, budget, running, scheduled, preempted, max_rows)
        return Decision(batch=list(scheduled.values()), preempt=preempted)

    @staticmethod
    def _preempt(victim: RequestView, running: list[RequestView],
                 scheduled: dict[str, tuple[RequestView, int]], budget: Budget,
                 preempted: list[RequestView]) -> None:
        running.remove(victim)
        entry = scheduled.pop(victim.request_id, None)
        if entry is not None:
            budget.give_back(victim, entry[1])
        budget.release(victim)
        preempted.append(victim)

    def _admit(self, view: SchedulerView, budget: Budget, running: list[RequestView],
               scheduled: dict[str, tuple[RequestView, int]], preempted: list[RequestView],
               max_rows: int) -> None:
        num_running = len(running)
        try:
            for request in self.waiting_in_order(view):
                if budget.tokens_left <= 0:
                    break
                if num_running >= max_rows:
                    victim = max(running, key=priority_key) if running else None
                    if victim is None or not self.displaces(request, victim):
                        break
                    self._preempt(victim, running, scheduled, budget, preempted)
                    num_running -= 1
                num_new = min(tokens_to_compute(request), budget.tokens_left)
                if not budget.take(request, num_new):
                    break  # the head waits for memory; nobody overtakes it
                scheduled[request.request_id] = (request, num_new)
                running.append(request)
                num_running += 1
        finally:
            self.admission_done()


@register
class VllmPriorityPolicy(VllmPolicy):
    """`vllm` with the waiting queue a heap on `priority_key` and the worst key as victim.

    The heap follows the scheduler's waiting queue through the hooks (arrivals and preemptions
    push, admissions and finishes drop), so an iteration costs O(admitted * log n), not a sort
    of thousands of waiting requests.
    """

    name = "vllm-priority"

    def __init__(self, options: PolicyOptions, latency_model: LatencySource,
                 config: SchedulerConfig) -> None:
        super().__init__(options, latency_model, config)
        self._waiting: RequestHeap[tuple[int, float]] = RequestHeap()
        self._popped: list[RequestView] = []  # taken off the heap during this decision

    def on_arrival(self, request: RequestView, view: SchedulerView) -> None:
        self._waiting.push(request, priority_key(request))

    def on_preempt(self, request: RequestView, view: SchedulerView) -> None:
        self._waiting.push(request, priority_key(request))

    def on_admit(self, request: RequestView, view: SchedulerView) -> None:
        self._waiting.discard(request.request_id)

    def on_finish(self, request: RequestView, view: SchedulerView) -> None:
        self._waiting.discard(request.request_id)

    def victim(self, running: list[RequestView]) -> RequestView:
        return max(running, key=priority_key)

    def waiting_in_order(self, view: SchedulerView) -> Iterator[RequestView]:
        while (request := self._waiting.pop()) is not None:
            self._popped.append(request)
            yield request

    def admission_done(self) -> None:
        # Everything looked at goes back; the scheduler's on_admit takes the admitted out.
        for request in self._popped:
            self._waiting.push(request, priority_key(request))
        self._popped.clear()

    def state(self) -> dict[str, Any]:
        return {"num_waiting": len(self._waiting)}


@register
class VllmPriorityPreemptPolicy(VllmPriorityPolicy):
    """`vllm-priority` with vLLM issue 40004 fixed: a full batch preempts its worst running
    request for a waiting one of strictly better priority."""

    name = "vllm-priority-preempt"

    def displaces(self, request: RequestView, victim: RequestView) -> bool:
        return request.priority < victim.priority
