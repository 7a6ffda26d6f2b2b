"""vLLM v1's default scheduler, and its priority variant.

Each iteration has a token budget (`max_num_batched_tokens`). Running requests go first: one
decode token each, or the next chunk of a chunked prefill. When a running request needs a new
KV block and none is free, the last request in the running order is preempted by recompute
(the request itself, when it is the last). Then, only if nothing was preempted, waiting
requests are admitted in order while their chunk fits the tokens, the rows and the free KV
blocks; the first one that does not fit stops admission (no overtaking, no preemption to
admit). At most `max_batch_size` requests run at once (vLLM's `max_num_seqs`).

- `vllm`: FCFS. Running in admission order (the newest is the victim), waiting by arrival.
- `vllm-priority`: both queues ordered by `(priority, arrival)`, lower first; the victim is the
  running request with the largest key.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sliceserve.config import SchedulerConfig
from sliceserve.latency_model import LatencyModel
from sliceserve.policies.base import (
    Budget,
    Decision,
    Policy,
    PolicyOptions,
    RequestView,
    SchedulerView,
    tokens_to_compute,
)
from sliceserve.policies.queues import RequestHeap
from sliceserve.policies.registry import register
from sliceserve.request import RequestStatus


@dataclass(frozen=True)
class VllmOptions(PolicyOptions):
    max_batch_size: int = 8  # requests running at once (vLLM's max_num_seqs)

    def __post_init__(self) -> None:
        if type(self.max_batch_size) is not int or self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an integer >= 1, got {self.max_batch_size!r}")


@register
class VllmPolicy(Policy):
    name = "vllm"
    Options = VllmOptions
    options: VllmOptions

    # --- queue orders: the only thing the priority variant changes ---
    def running_in_order(self, view: SchedulerView) -> list[RequestView]:
        """Running requests, served first to last; victims are taken from the end."""
        return list(view.running)  # admission order: the newest is the victim

    def waiting_in_order(self, view: SchedulerView) -> Iterator[RequestView]:
        """Waiting requests in the order they may be admitted (the caller stops at the
        first misfit)."""
        return iter(view.waiting)  # the scheduler keeps them by arrival

    def after_admission(self, admitted: list[RequestView], preempted: list[RequestView]) -> None:
        """Hook for queue bookkeeping once the decision is made."""

    # --- the shared schedule ---
    def schedule(self, view: SchedulerView) -> Decision:
        budget = Budget(view, self.options.max_batch_size)
        running = self.running_in_order(view)
        batch: list[tuple[RequestView, int]] = []
        preempted: list[RequestView] = []
        i = 0
        while i < len(running) and budget.tokens_left > 0 and budget.rows_left > 0:
            request = running[i]
            num_new = min(tokens_to_compute(request), budget.tokens_left)
            if not self._take_or_preempt(request, num_new, running, budget, preempted):
                break  # it was the last in order: it preempted itself
            batch.append((request, num_new))
            i += 1
        admitted: list[RequestView] = []
        if not preempted:  # as vLLM: no admissions in an iteration that had to preempt
            admitted = self._admit(view, budget, batch)
        self.after_admission(admitted, preempted)
        return Decision(batch=batch, preempt=preempted)

    @staticmethod
    def _take_or_preempt(request: RequestView, num_new: int, running: list[RequestView],
                         budget: Budget, preempted: list[RequestView]) -> bool:
        """Take `request`'s chunk, preempting from the end of `running` until its blocks fit
        (rows and tokens were checked: only blocks can be short). False if the request itself
        had to go."""
        while not budget.take(request, num_new):
            victim = running.pop()
            preempted.append(victim)
            budget.release(victim)
            if victim is request:
                return False
        return True

    def _admit(self, view: SchedulerView, budget: Budget,
               batch: list[tuple[RequestView, int]]) -> list[RequestView]:
        room = min(self.options.max_batch_size, view.config.max_num_seqs) - len(view.running)
        admitted: list[RequestView] = []
        if room <= 0 or budget.tokens_left <= 0 or not view.waiting:
            return admitted
        for request in self.waiting_in_order(view):
            num_new = min(tokens_to_compute(request), budget.tokens_left)
            if not budget.take(request, num_new):
                break  # FCFS: the head waits for memory; nobody overtakes it
            batch.append((request, num_new))
            admitted.append(request)
            if len(admitted) >= room or budget.tokens_left <= 0:
                break
        return admitted


def priority_key(request: RequestView) -> tuple[int, float]:
    """The one ordering key of `vllm-priority`'s queues: lower is served first."""
    return (request.priority, request.arrival_s)


@register
class VllmPriorityPolicy(VllmPolicy):
    """`vllm` with both queues ordered by `priority_key`.

    The waiting queue is a heap kept incrementally (arrivals via `on_arrival`, preemptions via
    this policy's own decisions), so an iteration costs O(admitted * log n), not a sort of
    thousands of waiting requests. If the heap and the scheduler ever disagree on the number of
    waiting requests (e.g. a decision was not applied), it is rebuilt from the view.
    """

    name = "vllm-priority"

    def __init__(self, options: PolicyOptions, latency_model: LatencyModel,
                 config: SchedulerConfig) -> None:
        super().__init__(options, latency_model, config)
        self._waiting = RequestHeap()
        self._popped: list[RequestView] = []  # taken off the heap during this decision

    def on_arrival(self, request: RequestView, view: SchedulerView) -> None:
        self._waiting.push(request, priority_key(request))

    def on_finish(self, request: RequestView, view: SchedulerView) -> None:
        self._waiting.discard(request.request_id)

    def running_in_order(self, view: SchedulerView) -> list[RequestView]:
        return sorted(view.running, key=priority_key)  # at most max_batch_size requests

    def waiting_in_order(self, view: SchedulerView) -> Iterator[RequestView]:
        if len(self._waiting) != len(view.waiting):
            self._rebuild(view)
        while (request := self._waiting.pop()) is not None:
            if request.status is not RequestStatus.WAITING:
                continue  # stale: admitted or finished without this policy seeing it
            self._popped.append(request)
            yield request

    def after_admission(self, admitted: list[RequestView], preempted: list[RequestView]) -> None:
        taken = {r.request_id for r in admitted}
        for request in self._popped:
            if request.request_id not in taken:
                self._waiting.push(request, priority_key(request))
        self._popped.clear()
        for request in preempted:  # back to waiting once the decision is applied
            self._waiting.push(request, priority_key(request))

    def _rebuild(self, view: SchedulerView) -> None:
        self._waiting.clear()
        for request in view.waiting:
            self._waiting.push(request, priority_key(request))

    def state(self) -> dict[str, Any]:
        return {"num_waiting": len(self._waiting)}
