"""FastServe: a skip-join multi-level feedback queue (MLFQ), preemptive at iteration boundaries.

Level i has the quantum `q0 * 2**i`. A request skips the levels whose quantum is shorter than
its predicted prefill time and joins the first one that covers it. Each iteration serves the
levels in order, each level's running requests (in the order they started) before its waiting
ones (in the order they joined it), until `max_batch_size` rows are taken. Filling the batch
from lower levels when the higher ones cannot fill it is a choice: it is work-conserving, and
FastServe's own scheduler also takes jobs across queues in priority order. Running requests
left out keep their KV cache and simply wait (implicit preemption at iteration boundaries).

Service is charged in predicted time: every request in a batch is charged the latency model's
duration of that batch (the policy never sees the execution clock). A request whose service at
its level reaches the level's quantum moves one level down. Every `starvation_check_iterations`
iterations, a request not served for `starvation_s` goes back to level 0 (FastServe's values,
which its code calls tunable).

KV: a waiting request is admitted only if its chunk fits the free blocks; the first one that
does not fit closes admission for the iteration (no overtaking). A running request that needs
a block preempts (recompute) the running request lowest in the order (lowest level, newest in
it) that is not in the batch; if there is none it waits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sliceserve.config import SchedulerConfig
from sliceserve.latency_model import chunk_pairs
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
class FastServeOptions(PolicyOptions):
    max_batch_size: int = 8
    num_levels: int = 6
    base_quantum_ms: float = 10.0  # q0: the quantum of level 0; level i has q0 * 2**i
    starvation_check_iterations: int = 1000
    starvation_s: float = 3.0  # unserved this long at a check: back to level 0

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "num_levels", "starvation_check_iterations"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("base_quantum_ms", "starvation_s"):
            value = getattr(self, name)
            if type(value) not in (int, float) or not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a positive number, got {value!r}")


class _Job:
    """The policy's bookkeeping for one request."""

    __slots__ = ("request", "level", "service_ms", "last_service_s")

    def __init__(self, request: RequestView, level: int, now_s: float) -> None:
        self.request = request
        self.level = level
        self.service_ms = 0.0  # predicted service received at the current level
        self.last_service_s = now_s  # arrival, then the start of its latest iteration


Queue = dict[str, _Job]  # insertion-ordered: the order of a level


@register
class FastServePolicy(Policy):
    name = "fastserve"
    Options = FastServeOptions
    options: FastServeOptions

    def __init__(self, options: PolicyOptions, latency_model: LatencySource,
                 config: SchedulerConfig) -> None:
        super().__init__(options, latency_model, config)
        levels = range(self.options.num_levels)
        self.quanta_ms = tuple(self.options.base_quantum_ms * 2**i for i in levels)
        # Per level, the jobs that hold KV and those that do not: they mirror the scheduler's
        # running and waiting queues, kept so by the state-change hooks.
        self._running: list[Queue] = [{} for _ in levels]
        self._waiting: list[Queue] = [{} for _ in levels]
        self._jobs: dict[str, _Job] = {}
        self._num_iterations = 0

    # --- levels ---
    def join_level(self, request: RequestView) -> int:
        """Skip-join: the first level whose quantum covers the predicted prefill time."""
        prefill_ms = self.latency_model.prefill_ms(request.num_prompt_tokens)
        for level, quantum_ms in enumerate(self.quanta_ms):
            if prefill_ms <= quantum_ms:
                return level
        return len(self.quanta_ms) - 1

    def level_of(self, request_id: str) -> int | None:
        job = self._jobs.get(request_id)
        return None if job is None else job.level

    def _is_running(self, job: _Job) -> bool:
        return job.request.request_id in self._running[job.level]

    def _move(self, job: _Job, to_level: int, running: bool) -> None:
        rid = job.request.request_id
        self._running[job.level].pop(rid, None)
        self._waiting[job.level].pop(rid, None)
        job.level = to_level
        (self._running if running else self._waiting)[to_level][rid] = job

    # --- hooks ---
    def on_arrival(self, request: RequestView, view: SchedulerView) -> None:
        job = _Job(request, self.join_level(request), view.now_s)
        self._jobs[request.request_id] = job
        self._waiting[job.level][request.request_id] = job

    def on_admit(self, request: RequestView, view: SchedulerView) -> None:
        job = self._jobs[request.request_id]
        self._move(job, job.level, running=True)  # to the back of its level's running jobs

    def on_preempt(self, request: RequestView, view: SchedulerView) -> None:
        job = self._jobs[request.request_id]
        self._move(job, job.level, running=False)  # to the back of its level's waiting jobs

    def on_finish(self, request: RequestView, view: SchedulerView) -> None:
        job = self._jobs.pop(request.request_id)
        self._running[job.level].pop(request.request_id, None)
        self._waiting[job.level].pop(request.request_id, None)

    # --- one iteration ---
    def schedule(self, view: SchedulerView) -> Decision:
        budget = Budget(view, self.options.max_batch_size)
        batch: list[tuple[_Job, int]] = []
        preempted: list[_Job] = []
        visited: set[str] = set()  # in the batch, passed over, or preempted
        admitting = True
        for level in range(len(self.quanta_ms)):
            for job in self._running[level].values():
                if budget.rows_left <= 0 or budget.tokens_left <= 0:
                    break
                request = job.request
                if request.request_id in visited:
                    continue  # preempted to make room for a job above it
                visited.add(request.request_id)
                num_new = min(tokens_to_compute(request), budget.tokens_left)
                if (budget.take(request, num_new)
                        or self._make_room(request, num_new, budget, preempted, visited)):
                    batch.append((job, num_new))
            for job in self._waiting[level].values():
                if not admitting or budget.rows_left <= 0 or budget.tokens_left <= 0:
                    break
                num_new = min(tokens_to_compute(job.request), budget.tokens_left)
                if not budget.take(job.request, num_new):
                    admitting = False  # FCFS within priority: nobody overtakes the misfit
                    break
                visited.add(job.request.request_id)
                batch.append((job, num_new))
        if batch:
            self._account(batch, view.now_s)
        return Decision(batch=[(j.request, n) for j, n in batch],
                        preempt=[j.request for j in preempted])

    def _make_room(self, request: RequestView, num_new: int, budget: Budget,
                   preempted: list[_Job], visited: set[str]) -> bool:
        """Preempt running jobs below `request` until its blocks fit (rows and tokens were
        checked, so only blocks can be short). False if nobody is left to preempt: then it
        keeps its KV and waits."""
        while (victim := self._victim(visited)) is not None:
            visited.add(victim.request.request_id)
            preempted.append(victim)
            budget.release(victim.request)
            if budget.take(request, num_new):
                return True
        return False

    def _victim(self, visited: set[str]) -> _Job | None:
        """The running job lowest in the order that is not visited (so below the current)."""
        for level in range(len(self._running) - 1, -1, -1):
            for rid in reversed(self._running[level]):
                if rid not in visited:
                    return self._running[level][rid]
        return None

    def _account(self, batch: list[tuple[_Job, int]], now_s: float) -> None:
        """Charge the batch's predicted duration, demote, admit; check starvation."""
        num_tokens = 0
        num_context = 0
        pairs = 0.0
        for job, num_new in batch:
            num_tokens += num_new
            num_context += job.request.num_computed_tokens + num_new
            pairs += chunk_pairs(num_new, job.request.num_computed_tokens)
        duration_ms = self.latency_model.iteration_ms(len(batch), num_tokens, num_context, pairs)
        last_level = len(self.quanta_ms) - 1
        for job, _ in batch:
            job.last_service_s = now_s
            job.service_ms += duration_ms
            if job.service_ms >= self.quanta_ms[job.level] and job.level < last_level:
                job.service_ms = 0.0
                # To the back of the next level (a job this decision admits moves to its
                # running jobs when the scheduler tells `on_admit`).
                self._move(job, job.level + 1, running=self._is_running(job))
        self._num_iterations += 1
        if self._num_iterations % self.options.starvation_check_iterations == 0:
            self._promote_starved(now_s)

    def _promote_starved(self, now_s: float) -> None:
        for job in self._jobs.values():
            if job.level > 0 and now_s - job.last_service_s >= self.options.starvation_s:
                job.service_ms = 0.0
                # The queue, not the status: this decision's preemptions are not applied yet.
                self._move(job, 0, running=self._is_running(job))

    def state(self) -> dict[str, Any]:
        return {
            "quanta_ms": list(self.quanta_ms),
            "running_per_level": [len(q) for q in self._running],
            "waiting_per_level": [len(q) for q in self._waiting],
            "num_iterations": self._num_iterations,
        }
