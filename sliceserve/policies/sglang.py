"""SGLang's priority scheduling (`--enable-priority-scheduling`), as BASELINES.md specifies.

Each iteration is a prefill iteration if anything can be prefilled, else a decode iteration
(SGLang without mixed chunks). A prefill iteration continues the chunked prompt in progress,
then takes waiting requests sorted by priority, then arrival, while the rows, the chunk budget
and the token reservation allow: a new request needs its prompt plus all of its output tokens
(`max_tokens`) to fit the free KV minus what the running requests still reserve for their
outputs (SGLang's `rem_total_tokens`); the first that does not fit ends admission. A prompt
longer than the chunk budget becomes the chunked request and ends the batch.

When the rows are full, a waiting request may preempt running ones, only if its priority is
better than each victim's by more than `preemption_threshold`: victims least important first
(ties: the most recently queued first), all or nothing (together they must free room for it;
else nobody is preempted and admission ends). A decode iteration runs every running request;
when their next tokens need more KV blocks than are free, requests are retracted (recompute),
fewest output tokens first, then the longest prompt.

Priorities: SGLang's values come from the requests' priority (the workloads' utility rank,
0 = most important) times `priority_step` (100: BASELINES.md [A]), lower values first (SGLang's
`--schedule-low-priority-values-first`), so any two classes are more than the default
threshold (10) apart.

Deviations: the reservation counts every running request's remaining outputs in full (our
outputs are forced to `max_tokens`, EOS ignored; SGLang's ignore-EOS admission is an exact
simulation of the same), `reserve_ratio` scales it; the victims' room counts what releasing
them frees (their KV and their reservation), where the code counts only their reservation.
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
from sliceserve.policies.registry import register


@dataclass(frozen=True)
class SglangOptions(PolicyOptions):
    max_batch_size: int = 8  # SGLang's max_running_requests
    chunk_tokens: int = 2048  # chunked_prefill_size (within the scheduler's token budget)
    priority_step: int = 100  # SGLang priority value per priority level [A]
    preemption_threshold: int = 10  # priority_scheduling_preemption_threshold
    priority_preemption: bool = True
    reserve_ratio: float = 1.0  # of the running requests' remaining outputs, reserved

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "chunk_tokens", "priority_step"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if type(self.preemption_threshold) is not int or self.preemption_threshold < 0:
            raise ValueError("preemption_threshold must be an integer >= 0")
        if not isinstance(self.priority_preemption, bool):
            raise ValueError("priority_preemption must be a bool")
        if not 0 <= self.reserve_ratio <= 1:
            raise ValueError(f"reserve_ratio must be in [0, 1], got {self.reserve_ratio!r}")


@register
class SglangPriorityPolicy(Policy):
    name = "sglang-priority"
    Options = SglangOptions
    options: SglangOptions

    def __init__(self, options: PolicyOptions, latency_model: LatencySource,
                 config: SchedulerConfig) -> None:
        super().__init__(options, latency_model, config)
        self._queued_s: dict[str, float] = {}  # when each request last entered the queue
        self._num_priority_preemptions = 0

    def on_arrival(self, request: RequestView, view: SchedulerView) -> None:
        self._queued_s[request.request_id] = view.now_s

    def on_preempt(self, request: RequestView, view: SchedulerView) -> None:
        self._queued_s[request.request_id] = view.now_s

    def on_finish(self, request: RequestView, view: SchedulerView) -> None:
        self._queued_s.pop(request.request_id, None)

    def value(self, request: RequestView) -> int:
        """SGLang's priority value (lower is more important)."""
        return request.priority * self.options.priority_step

    def reserved_tokens(self, request: RequestView) -> int:
        return int(self.options.reserve_ratio * request.remaining_output_tokens + 0.999999)

    # --- one iteration ---
    def schedule(self, view: SchedulerView) -> Decision:
        opts = self.options
        max_rows = min(opts.max_batch_size, view.config.max_num_seqs)
        budget = Budget(view, max_rows)
        running = list(view.running)
        rem_tokens = (view.num_free_blocks * view.config.block_size
                      - sum(self.reserved_tokens(r) for r in running))
        rem_chunk = min(opts.chunk_tokens, view.config.max_num_batched_tokens)
        batch: list[tuple[RequestView, int]] = []
        preempt: list[RequestView] = []
        chunked = False
        for r in running:  # the chunked prompt in progress goes first
            todo = tokens_to_compute(r)
            n = min(todo, rem_chunk, budget.tokens_left)
            if todo > 1 and n > 0 and budget.take(r, n):
                batch.append((r, n))
                rem_chunk -= n
                chunked = chunked or n < todo
        num_rows = len(running)
        waiting = sorted(view.waiting, key=lambda r: (self.value(r), r.arrival_s))
        for r in waiting:
            need = tokens_to_compute(r) + self.reserved_tokens(r)
            if num_rows >= max_rows:
                freed = self._preempt_for(r, need - rem_tokens, running, batch, budget, preempt)
                if freed is None:
                    break
                rem_tokens += freed
                num_rows = len(running)
            todo = tokens_to_compute(r)
            if need > rem_tokens or rem_chunk <= 0:
                break
            n = min(todo, rem_chunk, budget.tokens_left)
            if n < todo and chunked:
                break  # one chunked request at a time
            if n <= 0 or not budget.take(r, n):
                break
            batch.append((r, n))
            num_rows += 1
            rem_tokens -= need
            rem_chunk -= n
            if n < todo:
                break  # it became the chunked request: the chunk budget is spent
        if batch:
            return Decision(batch=batch, preempt=preempt)
        return Decision(batch=self._decode(running, budget, preempt), preempt=preempt)

    def _preempt_for(self, request: RequestView, tokens_to_free: int,
                     running: list[RequestView], batch: list[tuple[RequestView, int]],
                     budget: Budget, preempt: list[RequestView]) -> int | None:
        """Preempt running requests (all or nothing) that `request` outranks by more than the
        threshold until `tokens_to_free` (and a row) are freed; the tokens freed, or None."""
        if not self.options.priority_preemption:
            return None
        in_batch = {r.request_id for r, _ in batch}
        block = self.config.block_size
        victims = sorted((r for r in running if r.request_id not in in_batch),
                         key=lambda r: (-self.value(r), -self._queued_s.get(r.request_id, 0.0)))
        chosen: list[RequestView] = []
        freed = 0
        for victim in victims:
            if self.value(victim) - self.value(request) <= self.options.preemption_threshold:
                break
            chosen.append(victim)
            freed += self.reserved_tokens(victim) + budget.view.num_blocks_held(victim) * block
            if freed >= tokens_to_free:
                break
        if not chosen or freed < tokens_to_free:
            return None
        for victim in chosen:
            running.remove(victim)
            budget.release(victim)
            preempt.append(victim)
        self._num_priority_preemptions += len(chosen)
        return freed

    def _decode(self, running: list[RequestView], budget: Budget,
                preempt: list[RequestView]) -> list[tuple[RequestView, int]]:
        """Every running row decodes; retract (fewest outputs, then longest prompt, first)
        until their next tokens' KV blocks fit."""
        rows = [r for r in running if tokens_to_compute(r) == 1]
        view = budget.view
        needed = sum(view.num_blocks_needed(r, 1) for r in rows)
        free = view.num_free_blocks
        order = sorted(rows, key=lambda r: (r.num_output_tokens, -r.num_prompt_tokens))
        while needed > free and order:
            victim = order.pop(0)
            rows.remove(victim)
            needed -= view.num_blocks_needed(victim, 1)
            free += view.num_blocks_held(victim)
            budget.release(victim)
            preempt.append(victim)
        batch = []
        for r in rows:
            if budget.take(r, 1):
                batch.append((r, 1))
        return batch

    def state(self) -> dict[str, Any]:
        return {"priority_preemptions": self._num_priority_preemptions}
